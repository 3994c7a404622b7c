"""Feature jitter: the synthetic anomalies UniAD/IUF train their reconstruction on."""

from __future__ import annotations

import torch
from torch import Tensor


def feature_jitter(tokens: Tensor, scale: float, prob: float) -> Tensor:
    """Add Gaussian noise proportional to each token's norm.

    ``tokens`` is (B, L, C). Noise is ``randn * (||token|| / C) * scale``,
    applied to each sample with probability ``prob`` (UniAD's definition), so
    the network learns to map perturbed features back to normal ones instead of
    copying its input.
    """
    if scale <= 0 or prob <= 0:
        return tokens
    batch, _, channels = tokens.shape
    noise_std = tokens.norm(dim=-1, keepdim=True) / channels * scale
    noise = torch.randn_like(tokens) * noise_std
    apply = (torch.rand(batch, 1, 1, device=tokens.device) < prob).to(tokens.dtype)
    return tokens + noise * apply
