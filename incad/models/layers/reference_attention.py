"""Attention against a learnable reference: RLR's LCA / MLKA and Uni-RCM's reference-guide block.

A reconstruction network whose output can copy its input learns the identity
("learning shortcut") and reconstructs anomalies too. RLR (He et al., ECCV
2024) removes the copy path: every block rebuilds its tokens from a learnable
reference of normal patterns, seen through two masks on the token grid:

- Local Cross Attention (LCA): query = input token, key and value = reference
  tokens, only those inside the token's local window;
- Masked Learnable Key Attention (MLKA): query = input token, key = reference,
  value = input tokens, the token's own neighbourhood (itself included) masked
  out, so no token can see its own (possibly anomalous) value.

Uni-RCM's reference-guide block (built as Uni-RCM's public code builds it, see
:class:`ReferenceGuideBlock`) uses a learnable reference to gate a cross-modal
mapping instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from incad.models.layers.position import sine_position_embedding_2d


def neighbourhood(grid: tuple[int, int], window: int, device: torch.device | None = None) -> Tensor:
    """(L, L) bool, True where key token j lies in the ``window`` x ``window`` square centred on query token i."""
    rows = torch.arange(grid[0], device=device).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], device=device).repeat(grid[0])
    half = window // 2
    near_rows = (rows[:, None] - rows[None, :]).abs() <= half
    near_cols = (cols[:, None] - cols[None, :]).abs() <= half
    return near_rows & near_cols


def effective_window(window: int, grid: tuple[int, int]) -> int:
    """``window`` clipped to the largest odd size smaller than the grid's shorter side.

    A window as large as the grid would mask every key of some token in MLKA
    (an empty softmax); clipping keeps RLR's windows (5/7/11 at 16/32/64 grids)
    and lets the same options run on small test images.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"attention windows must be odd and positive, got {window}")
    if min(grid) < 2:
        raise ValueError(f"a {grid[0]}x{grid[1]} token grid leaves MLKA nothing to attend to: use larger images")
    largest = min(grid) - 1 if min(grid) % 2 == 0 else min(grid) - 2
    return max(1, min(window, largest))


class ReferenceAttention(nn.Module):
    """Multi-head attention whose queries come from the input and keys from the reference.

    ``values_from`` says where the values come from: ``"reference"`` (LCA) or
    ``"input"`` (MLKA). ``allowed`` is an (L, L) bool mask, True where query i
    may attend key j. No residual is added: the output is built from what the
    mask lets through only.
    """

    def __init__(self, dim: int, num_heads: int, values_from: str) -> None:
        super().__init__()
        if values_from not in ("reference", "input"):
            raise ValueError(f"values_from must be 'reference' or 'input', got {values_from!r}")
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.values_from = values_from
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)

    def _heads(self, tokens: Tensor) -> Tensor:
        batch, length, dim = tokens.shape
        return tokens.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, tokens: Tensor, reference: Tensor, allowed: Tensor) -> Tensor:
        """tokens (B, L, D), reference (1, L, D), allowed (L, L) -> (B, L, D)."""
        batch, length, dim = tokens.shape
        queries = self._heads(self.query(tokens))
        keys = self._heads(self.key(reference)).expand(batch, -1, -1, -1)
        value_source = reference.expand(batch, -1, -1) if self.values_from == "reference" else tokens
        values = self._heads(self.value(value_source))
        attended = F.scaled_dot_product_attention(queries, keys, values, attn_mask=allowed)
        return self.output(attended.transpose(1, 2).reshape(batch, length, dim))


class FeedForward(nn.Sequential):
    """Linear -> GELU -> Linear, the FFN of a transformer block."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))


class ReferenceReconstructionBlock(nn.Module):
    """One RLR block, eq. 4-5: Z = LN(MLKA + alpha*LCA), Y = LN(FFN(Z) + Z); no residual from the input."""

    def __init__(self, dim: int, num_heads: int, feedforward_dim: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.local_cross_attention = ReferenceAttention(dim, num_heads, values_from="reference")
        self.masked_key_attention = ReferenceAttention(dim, num_heads, values_from="input")
        self.attention_norm = nn.LayerNorm(dim)
        self.feedforward = FeedForward(dim, feedforward_dim, dim, dropout)
        self.feedforward_norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, reference: Tensor, window_mask: Tensor) -> Tensor:
        """``window_mask`` (L, L) is True inside each token's window: LCA's view, MLKA's blind spot."""
        local = self.local_cross_attention(tokens, reference, window_mask)
        masked = self.masked_key_attention(tokens, reference, ~window_mask)
        mixed = self.attention_norm(masked + self.alpha * local)
        return self.feedforward_norm(self.feedforward(mixed) + mixed)


class ReferenceReconstructor(nn.Module):
    """RLR's reconstruction of one feature level (eq. 4-6) from its own learnable reference.

    The reference R (L, C) has as many tokens as the level's grid (positions
    correspond) and is projected to the hidden width by a Linear layer plus a
    fixed 2-D sine position embedding, once for all blocks. Y_0 = FFN(F_in),
    K blocks, F_out = FFN(Y_K).
    """

    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        hidden_dim: int,
        num_heads: int,
        num_blocks: int,
        window: int,
        alpha: float,
        feedforward_ratio: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.window = effective_window(window, grid)
        self.reference = nn.Parameter(torch.randn(1, grid[0] * grid[1], channels) * 0.02)
        self.reference_projection = nn.Linear(channels, hidden_dim)
        self.register_buffer("position", sine_position_embedding_2d(*grid, hidden_dim), persistent=False)
        self.register_buffer("window_mask", neighbourhood(grid, self.window), persistent=False)
        self.input_feedforward = FeedForward(channels, hidden_dim * feedforward_ratio, hidden_dim, dropout)
        self.blocks = nn.ModuleList(
            ReferenceReconstructionBlock(hidden_dim, num_heads, hidden_dim * feedforward_ratio, alpha, dropout)
            for _ in range(num_blocks)
        )
        self.output_feedforward = FeedForward(hidden_dim, hidden_dim * feedforward_ratio, channels, dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L, C) input tokens -> (B, L, C) tokens rebuilt from the reference."""
        reference = self.reference_projection(self.reference) + self.position
        hidden = self.input_feedforward(tokens)
        for block in self.blocks:
            hidden = block(hidden, reference, self.window_mask)
        return self.output_feedforward(hidden)


class ReferenceGuideBlock(nn.Module):
    """Uni-RCM's reference-guide block on (B, L, D) tokens of a fixed grid.

    Three branches read the normalised tokens f (pre-norm, residual around the
    block as in the public code's mapping nets, which map one modality to the
    other and so cannot learn an identity shortcut):

    - reference gate: ``sigmoid(q * k / sqrt(D)) * v`` element-wise, q from f,
      k and v from the learnable reference: what the reference says is normal
      at that position, let through as far as f agrees with it;
    - local branch: depthwise 3x3 conv + BatchNorm on the token grid;
    - gated feature branch: ``sigmoid(MLP([f, reference])) * f``.

    The public code mixes with ``sigmoid(alpha)``; it does not fix which
    branches, so here ``s * gate + (1 - s) * local + gated`` with a learned
    scalar alpha (s = 0.5 at initialisation), then a pre-norm FFN (ratio 2).
    """

    def __init__(self, dim: int, grid: tuple[int, int], feedforward_ratio: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.local = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim))
        self.feature_gate = FeedForward(2 * dim, dim, dim)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.projection = nn.Linear(dim, dim)
        self.feedforward_norm = nn.LayerNorm(dim)
        self.feedforward = FeedForward(dim, dim * feedforward_ratio, dim, dropout)

    def forward(self, tokens: Tensor, reference: Tensor) -> Tensor:
        """tokens (B, L, D), reference (1, L, D) -> (B, L, D)."""
        batch, length, dim = tokens.shape
        normed = self.norm(tokens)
        reference = reference.expand(batch, -1, -1)
        gate = torch.sigmoid(self.query(normed) * self.key(reference) / dim**0.5) * self.value(reference)
        grid_view = normed.transpose(1, 2).reshape(batch, dim, *self.grid)
        local = self.local(grid_view).flatten(2).transpose(1, 2)
        gated = torch.sigmoid(self.feature_gate(torch.cat([normed, reference], dim=-1))) * normed
        share = torch.sigmoid(self.alpha)
        tokens = tokens + self.projection(share * gate + (1 - share) * local + gated)
        return tokens + self.feedforward(self.feedforward_norm(tokens))


class ReferenceGuidedMapping(nn.Module):
    """Uni-RCM's mapping net from one modality's tokens to the other's.

    Linear + LayerNorm + 2-D position embedding to ``hidden_dim``, a chain of
    reference-guide blocks sharing one learnable reference (1, L, hidden) of
    scale 0.1, and a Linear head to the target modality's channels.
    """

    def __init__(self, in_channels: int, out_channels: int, grid: tuple[int, int], hidden_dim: int, num_blocks: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_channels, hidden_dim), nn.LayerNorm(hidden_dim))
        self.register_buffer("position", sine_position_embedding_2d(*grid, hidden_dim), persistent=False)
        self.reference = nn.Parameter(torch.randn(1, grid[0] * grid[1], hidden_dim) * 0.1)
        self.blocks = nn.ModuleList(ReferenceGuideBlock(hidden_dim, grid) for _ in range(num_blocks))
        self.head = nn.Linear(hidden_dim, out_channels)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, L, in_channels) -> (B, L, out_channels)."""
        hidden = self.embed(tokens) + self.position
        for block in self.blocks:
            hidden = block(hidden, self.reference)
        return self.head(hidden)
