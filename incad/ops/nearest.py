"""Nearest-neighbour search over a memory bank in chunks, so memory stays bounded whatever the bank size."""

from __future__ import annotations

import torch
from torch import Tensor

# At most this many query x bank distances are held at once (64 MiB of float32).
DISTANCE_BUDGET = 2**24


def partial_squared_distances(queries: Tensor, bank: Tensor, bank_norms: Tensor) -> Tensor:
    """(N, M) ``|z|^2 - 2 x.z`` for each query x and bank row z (``bank_norms``: the rows' squared norms).

    Adding ``|x|^2`` gives the squared distance; it does not change which row
    is nearest, so it is added after the minimum, to N values instead of N x M.
    One fused matrix product, no square root over the whole matrix.
    """
    return torch.addmm(bank_norms[None, :], queries, bank.T, alpha=-2.0)


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
    a query with no eligible row gets distance inf and index -1. Distances
    follow ``|x|^2 + |z|^2 - 2 x.z`` with ``|x|^2`` added after the minimum,
    as :func:`partial_squared_distances` explains; ``torch.cdist`` computes
    them the same way for more than 25 rows, so both agree to float rounding.
    """
    if bank.shape[0] == 0:
        raise ValueError("nearest_neighbours: the memory bank is empty")
    rows = max(1, budget // bank.shape[0])
    # [x, 1] . [-2z, |z|^2] = |z|^2 - 2 x.z: the norms ride in the product instead of a pass over the N x M block.
    augmented_bank = torch.cat([bank * -2.0, (bank * bank).sum(dim=1, keepdim=True)], dim=1).T
    distances, indices = [], []
    for start in range(0, queries.shape[0], rows):
        block = queries[start : start + rows]
        partial = torch.cat([block, block.new_ones(len(block), 1)], dim=1) @ augmented_bank
        if query_groups is not None and bank_groups is not None:
            partial.masked_fill_(query_groups[start : start + rows, None] == bank_groups[None, :], float("inf"))
        nearest = partial.min(dim=1)
        distances.append(nearest.values.add_((block * block).sum(dim=1)).clamp_min_(0.0).sqrt_())
        indices.append(torch.where(torch.isinf(nearest.values), -1, nearest.indices))
    if not distances:
        return queries.new_zeros(0), torch.zeros(0, dtype=torch.long, device=queries.device)
    return torch.cat(distances), torch.cat(indices)
