"""Frozen EfficientNet convolutions with their BatchNorm folded in and "same" padding done by the convolution.

The backbones are frozen and always in eval mode, so each BatchNorm is a fixed
per-channel scale and shift: it folds into the convolution before it (weight
times scale, bias shifted), which saves one pass over every activation map.
``efficientnet_pytorch``'s dynamic "same" padding pads with ``F.pad`` (a
zero-filled copy of the input) before every convolution; when the padding is
the same on both sides, as for every stride-1 convolution, the convolution
pads itself instead. Both give the same features up to float rounding.

The modules keep their parameters and state-dict keys (checkpoints and
feature-cache fingerprints are unchanged): the classes are swapped in place,
the folded weights are non-persistent buffers, and :func:`refold` recomputes
them whenever the weights are loaded again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from efficientnet_pytorch.utils import Conv2dDynamicSamePadding
from torch import Tensor, nn


class FoldedBatchNorm(nn.BatchNorm2d):
    """A BatchNorm whose scale and shift live in the convolution before it: the identity at forward."""

    def forward(self, features: Tensor) -> Tensor:
        return features


class SamePaddingConv(Conv2dDynamicSamePadding):
    """TensorFlow "same" convolution that pads inside the convolution when the padding is symmetric.

    Uses ``folded_weight`` / ``folded_bias`` (its BatchNorm folded in) when set.
    """

    folded_weight: Tensor | None
    folded_bias: Tensor | None

    def forward(self, features: Tensor) -> Tensor:
        weight = self.weight if self.folded_weight is None else self.folded_weight
        bias = self.bias if self.folded_weight is None else self.folded_bias
        pads = []
        for size, kernel, stride, dilation in zip(features.shape[-2:], self.weight.shape[-2:], self.stride, self.dilation):
            pads.append(max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0))
        (pad_h, pad_w) = pads
        if pad_h % 2 == 0 and pad_w % 2 == 0:
            return F.conv2d(features, weight, bias, self.stride, (pad_h // 2, pad_w // 2), self.dilation, self.groups)
        padded = F.pad(features, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)


def fold_batch_norms(modules: Sequence[nn.Module], pairs: Sequence[tuple[nn.Module, nn.Module]]) -> None:
    """Swap every dynamic-padding convolution of ``modules`` to :class:`SamePaddingConv` and fold each (conv, BatchNorm) of ``pairs``."""
    for module in modules:
        for sub in module.modules():
            if type(sub) is Conv2dDynamicSamePadding:
                sub.__class__ = SamePaddingConv
                sub.register_buffer("folded_weight", None, persistent=False)
                sub.register_buffer("folded_bias", None, persistent=False)
    for conv, norm in pairs:
        if not isinstance(conv, SamePaddingConv) or type(norm) is not nn.BatchNorm2d:
            raise TypeError(f"cannot fold {type(norm).__name__} into {type(conv).__name__}")
        norm.__class__ = FoldedBatchNorm
    refold(pairs)


@torch.no_grad()
def refold(pairs: Sequence[tuple[nn.Module, nn.Module]]) -> None:
    """Recompute the folded weight and bias of each (conv, BatchNorm) pair from their current tensors."""
    for conv, norm in pairs:
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = norm.bias - norm.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.folded_weight = (conv.weight * scale[:, None, None, None]).contiguous(memory_format=torch.channels_last)
        conv.folded_bias = bias
