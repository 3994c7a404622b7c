"""CFR's cycle-consistency terms: a feature mapped to the other modality and back must return to itself (valid tokens only)."""

from __future__ import annotations

from torch import Tensor

from incad.data.sample import Batch
from incad.learners.cfm.loss import mapping_loss


def cycle_2d_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """RGB -> 3-D -> RGB: 1 - cos between the round-tripped and the true RGB features."""
    return mapping_loss(outputs["2d/cycled"], outputs["2d/features"], outputs["valid"])


def cycle_3d_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """3-D -> RGB -> 3-D: 1 - cos between the round-tripped and the true 3-D features."""
    return mapping_loss(outputs["3d/cycled"], outputs["3d/features"], outputs["valid"])
