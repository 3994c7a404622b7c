"""Fixed 2-D sine/cosine position embeddings, valid for any grid size."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_embedding_2d(height: int, width: int, dim: int, device: torch.device | None = None) -> Tensor:
    """A (height*width, dim) embedding: half the channels encode rows, half columns."""
    if dim % 4 != 0:
        raise ValueError(f"position embedding dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * frequencies
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * frequencies
    row_embedding = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    col_embedding = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row_embedding, col_embedding], dim=-1).reshape(height * width, dim)
