"""CFM's mapping loss and distances, restricted to valid tokens."""

from __future__ import annotations

from torch import Tensor

from incad.data.sample import Batch
from incad.learners.features import cosine_distance


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of (B, L) ``values`` over the True entries of ``valid``; 0 (with a gradient path) when there are none."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def mapping_loss(predicted: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """CFM's loss: 1 - cos between mapped and true features, averaged over valid tokens only."""
    return masked_mean(cosine_distance(predicted, target), valid)


def mapping_2d_to_3d_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """The mapping loss of the 2-D -> 3-D net, read from the learner's named outputs."""
    return mapping_loss(outputs["3d/predicted"], outputs["3d/features"], outputs["valid"])


def mapping_3d_to_2d_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """The mapping loss of the 3-D -> 2-D net, read from the learner's named outputs."""
    return mapping_loss(outputs["2d/predicted"], outputs["2d/features"], outputs["valid"])
