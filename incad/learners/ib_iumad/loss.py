"""IB-IUMAD's losses (eq. 3, 8, 9) and the terms of eq. 10 built from them.

The pure functions take tensors; the ``*_term`` functions have the
``compute(outputs, batch)`` signature of :class:`incad.learners.terms.LossTerm`
and read the learner's named outputs, so each term of eq. 10 can be switched on
and weighted (lambda_1..4) from the YAML.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from incad.data.sample import Batch


def classifier_loss(logits: Tensor, object_id: Tensor) -> Tensor:
    """Eq. 3: cross-entropy between object logits (B, K) and object ids (B,), mean over the batch."""
    return F.cross_entropy(logits, object_id)


def information_bottleneck_loss(fused_logits: Tensor, bottlenecked_logits: Tensor, detach_fused: bool = True) -> Tensor:
    """Eq. 8: KL[P(Y|F_fu) || P(Y|F^g)] = sum_y p_fu(y) log(p_fu(y) / p_g(y)), mean over the batch.

    P(Y|F_fu) is the target and is detached by default: the paper uses the KL
    "to optimise F^g" towards F_fu (eq. 7 bounds I(F^g; Y) by I(F_fu; Y)), and
    letting the gradient reach F_fu would let the fused feature lose label
    information to match the bottleneck instead.
    """
    target = fused_logits.detach() if detach_fused else fused_logits
    return F.kl_div(
        F.log_softmax(bottlenecked_logits, dim=-1),
        F.log_softmax(target, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def fusion_loss(original_features: Tensor, bottlenecked: Tensor) -> Tensor:
    """Eq. 9, ||F_org - F^g||_2^2 / (W*H), averaged over channels as well.

    Eq. 9 sums the squared error over channels; with unnormalised EfficientNet
    features that makes the fusion term about C (~176) times every other term of
    eq. 10, so with the paper's lambdas of 1 it drowns the classifier and IB
    terms. Averaging over channels too (plain MSE) keeps lambda = 1 balanced. The
    shapes must match exactly so broadcasting cannot hide a layout mistake.
    """
    if original_features.shape != bottlenecked.shape:
        raise ValueError(
            f"fusion_loss needs equal shapes, got {tuple(original_features.shape)} "
            f"and {tuple(bottlenecked.shape)}"
        )
    return F.mse_loss(bottlenecked, original_features)


def rgb_classifier_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """lambda_1 term of eq. 10: CE of the RGB Mamba-decoder classifier."""
    return classifier_loss(outputs["rgb/logits"], batch.object_id)


def depth_classifier_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """lambda_2 term of eq. 10: CE of the depth Mamba-decoder classifier."""
    return classifier_loss(outputs["depth/logits"], batch.object_id)


def fused_classifier_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """CE of the shared classifier on F_fu: not in eq. 10, but it anchors the IB target.

    With P(Y|F_fu) detached in eq. 8, nothing else ties the fused prediction to
    the object labels, and a classifier that predicts the same distribution for
    F_fu and F^g (e.g. uniform) would make the KL zero without keeping any
    label information.
    """
    return classifier_loss(outputs["fusion/fused_logits"], batch.object_id)


def fusion_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """lambda_3 term of eq. 10: eq. 9 between F^g mapped back to feature space and the RGB and depth features."""
    target = torch.cat([outputs["rgb/features"], outputs["depth/features"]], dim=-1)
    return fusion_loss(target, outputs["fusion/reconstruction"])


def information_bottleneck_term(outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """lambda_4 term of eq. 10: the IB KL between the fused and bottlenecked predictions."""
    return information_bottleneck_loss(outputs["fusion/fused_logits"], outputs["fusion/bottlenecked_logits"])
