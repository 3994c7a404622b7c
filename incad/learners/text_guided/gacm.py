"""GACM, the Geometry-Aware Cross-Modal Mapper (text-guided paper, III-A, eq. 1-4): RGB tokens -> 3-D tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GeometryAwareMapper(nn.Module):
    """``F_rgb->3d = R(F_rgb) + GELU(LN(F_geo * G + F_sem * (1 - G)))`` on (B, L, C) tokens.

    ``phi_s`` and ``phi_g`` (eq. 1-2) are linear embeddings of the RGB tokens
    into the 3-D feature width; the geometry prior gate ``G = sigmoid(W_g F_geo)``
    (eq. 3) is computed from the geometric branch, as the paper's equation
    writes it: a gate read from the true 3-D features would let the mapping
    copy its own target, and the anomaly score is the mapping's failure to
    predict that target. ``R`` is a linear projection, since the RGB and 3-D
    widths differ in general (768 and 1152 in the paper).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.semantic = nn.Linear(in_channels, out_channels)  # phi_s
        self.geometric = nn.Linear(in_channels, out_channels)  # phi_g
        self.gate = nn.Linear(out_channels, out_channels)  # W_g
        self.norm = nn.LayerNorm(out_channels)
        self.residual = nn.Linear(in_channels, out_channels)  # R

    def gated_fusion(self, features: Tensor) -> dict[str, Tensor]:
        """Eq. 1-3: the two branches, the gate G in [0, 1] and F_fused, each (B, L, out_channels)."""
        semantic, geometric = self.semantic(features), self.geometric(features)
        gate = torch.sigmoid(self.gate(geometric))
        return {"semantic": semantic, "geometric": geometric, "gate": gate, "fused": geometric * gate + semantic * (1 - gate)}

    def forward(self, features: Tensor) -> Tensor:
        """Eq. 4."""
        return self.residual(features) + F.gelu(self.norm(self.gated_fusion(features)["fused"]))
