"""CFM's mapping loss and distances, restricted to valid tokens."""

from __future__ import annotations

from torch import Tensor

from incad.learners.features import cosine_distance


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of (B, L) ``values`` over the True entries of ``valid``; 0 (with a gradient path) when there are none."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def mapping_loss(predicted: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """CFM's loss: 1 - cos between mapped and true features, averaged over valid tokens only."""
    return masked_mean(cosine_distance(predicted, target), valid)
