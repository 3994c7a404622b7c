"""Buffers that grow as a learner learns (codebooks, memory banks, prototypes) and still reload.

``nn.Module.load_state_dict`` copies a saved tensor into the buffer a freshly
built module already has, so a buffer that starts empty and grows with every
experience fails to load with a size mismatch. A *growing* buffer is resized
to the saved tensor's shape (keeping its own dtype and device) just before the
copy; every other buffer and parameter keeps PyTorch's strict shape check.
This is the one mechanism every learner with growing state uses, so a trained
learner restores into a freshly built one for ``--resume`` and the registry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

GROWING_ATTRIBUTE = "_incad_growing_buffers"


def _resize_growing_buffers(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for name in getattr(module, GROWING_ATTRIBUTE):
        saved = state_dict.get(prefix + name)
        current = module._buffers.get(name)
        if isinstance(saved, Tensor) and current is not None and saved.shape != current.shape:
            module._buffers[name] = torch.empty(saved.shape, dtype=current.dtype, device=current.device)


def register_growing_buffer(module: nn.Module, name: str, tensor: Tensor) -> None:
    """Register ``tensor`` as buffer ``name`` of ``module`` whose shape may change between save and load."""
    module.register_buffer(name, tensor)
    growing = module.__dict__.get(GROWING_ATTRIBUTE)
    if growing is None:
        growing = module.__dict__[GROWING_ATTRIBUTE] = set()
        module.register_load_state_dict_pre_hook(_resize_growing_buffers)
    growing.add(name)


def growing_buffer_names(module: nn.Module) -> list[str]:
    """State-dict keys of every growing buffer in ``module`` and its submodules (for tests and reports)."""
    return sorted(
        f"{prefix}.{name}" if prefix else name
        for prefix, child in module.named_modules()
        for name in child.__dict__.get(GROWING_ATTRIBUTE, ())
    )
