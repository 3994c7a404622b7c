"""The trainable parameters of a learner, by name: what continual plugins protect, copy and pull.

Frozen backbones are not trained, so they never enter an importance, a
snapshot or an EMA; keying by name keeps the state checkpointable as a plain
dict of tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that receive gradients, keyed by their dotted name."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


@torch.no_grad()
def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the trainable parameters (a frozen "previous model" without copying the module)."""
    return {name: parameter.detach().clone() for name, parameter in trainable_parameters(model).items()}
