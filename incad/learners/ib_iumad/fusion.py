"""IB-IUMAD's Information Bottleneck Fusion Module (IBFM, section 3.3, eq. 4-5).

The RGB and depth reconstructions of the MRN are fused at two depths, the two
fused token sets are combined by one of the operators compared in Table 6
(cross-attention is the paper's choice), and a two-layer bottleneck projection
turns the fused feature F_fu into F^g. A classifier head shared by F_fu and F^g
gives the two label distributions whose KL divergence is the IB loss (eq. 8).

Choices where the paper is silent (all documented where they are made):

- ``⊕`` in eq. 4 is channel concatenation followed by a Linear(2C -> C) per
  depth, so every fusion operator sees two (B, L, C) token sets;
- ``Cross_Att(F^1, F^2)``: the first argument is the query, so the rec2 tokens
  attend to the rec4 tokens, with a residual on the query and a LayerNorm;
- the bottleneck width defaults to C // 2 and the dropout to 0.1;
- the object classifier mean-pools the tokens before one Linear layer.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from incad.models.layers import FastDropout

FusionName = Literal["add", "concat_fc", "linear_glu", "cross_attention"]
FUSION_NAMES: tuple[str, ...] = get_args(FusionName)


class AddFusion(nn.Module):
    """Table 6 "Addition": a + b, no parameters."""

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        return first + second


class ConcatLinearFusion(nn.Module):
    """Table 6 "ConcatFC": Linear(2C -> C) on the channel concatenation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(2 * dim, dim)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        return self.project(torch.cat([first, second], dim=-1))


class LinearGLUFusion(nn.Module):
    """Table 6 "LinearGLU": Linear(2C -> 2C) on the concatenation, then a GLU gates it back to C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(2 * dim, 2 * dim)
        self.gate = nn.GLU(dim=-1)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        return self.gate(self.project(torch.cat([first, second], dim=-1)))


class CrossAttentionFusion(nn.Module):
    """Table 6 "Cross-attention", eq. 4 ``Cross_Att(F^1, F^2)``.

    ``first`` gives the queries, ``second`` the keys and values (the usual
    reading of Cross_Att(Q, KV)); the output is LayerNorm(first + attention), a
    post-norm residual block as in the transformer decoders of UniAD/IUF, so the
    fused feature keeps the query's token layout and scale.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        attended, _ = self.attention(first, second, second, need_weights=False)
        return self.norm(first + attended)


def build_fusion(name: str, dim: int, num_heads: int = 8) -> nn.Module:
    """The Table 6 operator ``name`` mapping two (B, L, C) token sets to (B, L, C).

    ``num_heads`` is only used by ``cross_attention``.
    """
    if name == "add":
        return AddFusion()
    if name == "concat_fc":
        return ConcatLinearFusion(dim)
    if name == "linear_glu":
        return LinearGLUFusion(dim)
    if name == "cross_attention":
        return CrossAttentionFusion(dim, num_heads)
    raise ValueError(f"unknown fusion operator '{name}', expected one of {list(FUSION_NAMES)}")


class IBProjection(nn.Module):
    """Eq. 5: F_fu -> Linear, Dropout + ReLU -> z -> Linear, Dropout + ReLU -> F^g.

    The narrow z is the bottleneck that forces F^g to drop what the KL loss
    (eq. 8) does not need; ``encode`` gives z. The paper does not give its
    width: ``bottleneck_dim`` defaults to C // 2. The trailing ReLU of eq. 5
    makes F^g non-negative.
    """

    def __init__(self, dim: int, bottleneck_dim: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        bottleneck_dim = bottleneck_dim or dim // 2
        self.encode = nn.Sequential(nn.Linear(dim, bottleneck_dim), FastDropout(dropout), nn.ReLU())
        self.decode = nn.Sequential(nn.Linear(bottleneck_dim, dim), FastDropout(dropout), nn.ReLU())

    def forward(self, fused: Tensor) -> Tensor:
        return self.decode(self.encode(fused))


class InformationBottleneckFusion(nn.Module):
    """IBFM (section 3.3): fuse RGB and depth reconstructions, then bottleneck them.

    Eq. 4: F^1 = rgb_rec2 ⊕ depth_rec2 and F^2 = rgb_rec4 ⊕ depth_rec4, where ⊕
    is channel concatenation followed by a Linear(2C -> C) of its own for each
    depth (the paper does not say how 2C goes back to C); F_fu = fusion(F^1, F^2)
    with the chosen Table 6 operator. Eq. 5: F^g = IBProjection(F_fu). One object
    classifier (mean over tokens, then Linear) is shared by F_fu and F^g so the
    two label distributions of eq. 8 are read in the same way.
    """

    def __init__(
        self,
        dim: int,
        num_objects: int,
        fusion: FusionName = "cross_attention",
        num_heads: int = 8,
        bottleneck_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.merge_rec2 = nn.Linear(2 * dim, dim)
        self.merge_rec4 = nn.Linear(2 * dim, dim)
        self.fusion = build_fusion(fusion, dim, num_heads)
        self.bottleneck = IBProjection(dim, bottleneck_dim, dropout)
        self.classifier = nn.Linear(dim, num_objects)

    def classify(self, tokens: Tensor) -> Tensor:
        """Object logits (B, num_objects) of a (B, L, C) token set."""
        return self.classifier(tokens.mean(dim=1))

    def forward(self, rgb_rec2: Tensor, depth_rec2: Tensor, rgb_rec4: Tensor, depth_rec4: Tensor) -> dict[str, Tensor]:
        """All inputs are (B, L, C); returns F_fu, F^g (B, L, C) and their logits (B, num_objects)."""
        fusion_rec2 = self.merge_rec2(torch.cat([rgb_rec2, depth_rec2], dim=-1))
        fusion_rec4 = self.merge_rec4(torch.cat([rgb_rec4, depth_rec4], dim=-1))
        fused = self.fusion(fusion_rec2, fusion_rec4)
        bottlenecked = self.bottleneck(fused)
        return {
            "fused": fused,
            "bottlenecked": bottlenecked,
            "fused_logits": self.classify(fused),
            "bottlenecked_logits": self.classify(bottlenecked),
        }
