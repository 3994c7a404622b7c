"""Loss of the reconstruction learner."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(reconstruction: Tensor, features: Tensor) -> Tensor:
    """Mean squared error between reconstructed and clean frozen features (UniAD)."""
    return F.mse_loss(reconstruction, features)
