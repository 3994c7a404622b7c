"""Nearest-neighbour search over a memory bank in chunks, so memory stays bounded whatever the bank size."""

from __future__ import annotations

import torch
from torch import Tensor

# At most this many query x bank distances are held at once (64 MiB of float32).
DISTANCE_BUDGET = 2**24


def nearest_neighbours(
    queries: Tensor,
    bank: Tensor,
    query_groups: Tensor | None = None,
    bank_groups: Tensor | None = None,
    budget: int = DISTANCE_BUDGET,
) -> tuple[Tensor, Tensor]:
    """Euclidean distance (N,) and index (N,) of each (N, d) query's nearest row of the (M, d) bank.

    Queries are processed ``budget // M`` rows at a time, so at most ``budget``
    distances exist at once. With ``query_groups`` (N,) and ``bank_groups``
    (M,), a query never matches a bank row of its own group (leave-one-out);
    a query with no eligible row gets distance inf and index -1.
    """
    if bank.shape[0] == 0:
        raise ValueError("nearest_neighbours: the memory bank is empty")
    rows = max(1, budget // bank.shape[0])
    distances, indices = [], []
    for start in range(0, queries.shape[0], rows):
        block = torch.cdist(queries[start : start + rows], bank)
        if query_groups is not None and bank_groups is not None:
            same = query_groups[start : start + rows, None] == bank_groups[None, :]
            block = block.masked_fill(same, float("inf"))
        nearest = block.min(dim=1)
        distances.append(nearest.values)
        indices.append(torch.where(torch.isinf(nearest.values), -1, nearest.indices))
    if not distances:
        return queries.new_zeros(0), torch.zeros(0, dtype=torch.long, device=queries.device)
    return torch.cat(distances), torch.cat(indices)
