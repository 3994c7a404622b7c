"""Loss of the reconstruction learner."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from incad.data.sample import Batch


def reconstruction_loss(reconstruction: Tensor, features: Tensor) -> Tensor:
    """Mean squared error between reconstructed and clean frozen features (UniAD)."""
    return F.mse_loss(reconstruction, features)


def reconstruction_term(outputs: dict[str, Tensor], batch: Batch, modality: str) -> Tensor:
    """The reconstruction loss of ``modality``'s branch, read from the learner's named outputs."""
    return reconstruction_loss(outputs[f"{modality}/reconstruction"], outputs[f"{modality}/features"])
