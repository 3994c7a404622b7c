"""The text-guided learner's visual-linguistic alignment terms (eq. 10) and the text-space distance of its map (eq. 14-15).

L_vis (eq. 9) is CFM's pair of mapping terms (:mod:`incad.learners.cfm.loss`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from incad.data.sample import Batch
from incad.learners.cfm.loss import masked_mean


def anchor_cosine_distance(projected: Tensor, anchors: Tensor) -> Tensor:
    """(B, L, D) tokens projected into the text space and (B, P, D) anchors of each image's class -> (B, L): 1 - cos to the nearest anchor."""
    similarity = F.normalize(projected, dim=-1) @ F.normalize(anchors, dim=-1).transpose(1, 2)
    return 1.0 - similarity.amax(dim=-1)


def anchor_distance(projected: Tensor, anchors: Tensor) -> Tensor:
    """Eq. 15 between unit vectors, to the nearest anchor: ``sqrt(2 (1 - cos))``, (B, L).

    L_text constrains only the directions of the projections and anchors, so
    the Euclidean distance of eq. 15 is taken after L2 normalisation;
    otherwise it would mostly measure the projections' untrained norms.
    """
    return (2.0 * anchor_cosine_distance(projected, anchors)).clamp_min(0.0).sqrt()


def text_rgb_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """Eq. 10, first term: 1 - sim(F_text->rgb, F_rgb->text), over valid tokens."""
    return masked_mean(anchor_cosine_distance(outputs["2d/text"], outputs["text/anchors"]), outputs["valid"])


def text_3d_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """Eq. 10, second term: 1 - sim(F_text->3d, F_3d->text), over valid tokens."""
    return masked_mean(anchor_cosine_distance(outputs["3d/text"], outputs["text/anchors"]), outputs["valid"])
