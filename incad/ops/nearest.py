"""Nearest-neighbour search over a memory bank in chunks, so memory stays bounded whatever the bank size."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

# At most this many query x bank distances are held at once (64 MiB of float32).
DISTANCE_BUDGET = 2**24
# Unit roundoff of bfloat16 (8 significant bits, round to nearest).
BFLOAT16_UNIT = 2.0**-8
# The shortlist search falls back to the full float32 product for a block whose shortlists hold more than this many
# bank rows per query on average (far queries among many near-equidistant rows): the exact pass stays small.
SHORTLIST_ROWS = 64


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
    shortlist: bool = False,
) -> tuple[Tensor, Tensor]:
    """Euclidean distance (N,) and index (N,) of each (N, d) query's nearest row of the (M, d) bank.

    Queries are processed ``budget // M`` rows at a time, so at most ``budget``
    distances exist at once. With ``query_groups`` (N,) and ``bank_groups``
    (M,), a query never matches a bank row of its own group (leave-one-out);
    a query with no eligible row gets distance inf and index -1. Distances
    follow ``|x|^2 + |z|^2 - 2 x.z`` with ``|x|^2`` added after the minimum,
    as :func:`partial_squared_distances` explains; ``torch.cdist`` computes
    them the same way for more than 25 rows, so both agree to float rounding.
    ``shortlist`` (no groups): the same answer, through
    :func:`shortlisted_nearest_neighbours` on a CPU that multiplies bfloat16
    natively (:func:`fast_bfloat16`).
    """
    if bank.shape[0] == 0:
        raise ValueError("nearest_neighbours: the memory bank is empty")
    if shortlist and query_groups is None and queries.dtype == torch.float32 and fast_bfloat16(queries.device):
        return shortlisted_nearest_neighbours(queries, bank, budget)
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


@functools.cache
def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` is a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX, read from Linux's /proc/cpuinfo).

    CPU only: there the products accumulate in float32, which the error bound of
    :func:`shortlisted_nearest_neighbours` assumes; GPU libraries may reduce in
    lower precision, and their float32 products are fast already.
    """
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def shortlisted_nearest_neighbours(queries: Tensor, bank: Tensor, budget: int = DISTANCE_BUDGET) -> tuple[Tensor, Tensor]:
    """:func:`nearest_neighbours` in two passes: a bfloat16 product shortlists rows, float32 decides among them.

    The bfloat16 product (faster than float32 where the processor multiplies
    bfloat16 natively) gives each partial distance p = |z|^2 - 2 x.z up to a bounded
    error: inputs rounded to 8 bits (relative error u = 2^-8 each) move the
    product by at most 2 (2u + u^2) |x| max|z|, float32 accumulation by far
    less, and |z|^2 is carried in two bfloat16 parts (high and low), so only
    the result's rounding to bfloat16 adds u |p|. Every row whose estimate is
    within twice these bounds of the row minimum is kept (a handful per
    query); any row left out is provably farther than the one that set the
    minimum. The kept rows' distances are then computed exactly in float32,
    as |x - z|, so the result is the exact nearest row (to float rounding; a
    tie may pick another of the tied rows). A block whose shortlists run long
    falls back to the full float32 product.
    """
    bank_norms = (bank * bank).sum(dim=1)
    high = bank_norms.bfloat16()
    low = (bank_norms - high.float()).bfloat16()
    coarse_bank = torch.cat([(bank * -2.0).bfloat16(), high[:, None], low[:, None]], dim=1).T.contiguous()
    largest_norm = bank_norms.max().sqrt()
    accumulation = (bank.shape[1] + 2) * 2.0**-24
    product_error = 2.0 * (2.0 * BFLOAT16_UNIT + BFLOAT16_UNIT**2) * (1.0 + accumulation) + 2.0 * accumulation
    norm_error = BFLOAT16_UNIT**2 + accumulation
    result_unit = BFLOAT16_UNIT / (1.0 - BFLOAT16_UNIT)
    rows = max(1, budget // bank.shape[0])
    distances, indices = [], []
    for start in range(0, queries.shape[0], rows):
        block = queries[start : start + rows]
        ones = block.new_ones(len(block), 2)
        coarse = torch.cat([block, ones], dim=1).bfloat16() @ coarse_bank
        best = coarse.amin(dim=1).float()
        input_error = product_error * block.norm(dim=1) * largest_norm + norm_error * largest_norm**2
        slack = (2.0 * input_error + 2.0 * result_unit * best.abs()) / (1.0 - result_unit)
        limit = best + slack * 1.001
        # Compared in bfloat16 (no float32 copy of the block): raised by 2u |limit| first, so rounding cannot lower it.
        limit = (limit + 2.0 * BFLOAT16_UNIT * limit.abs()).bfloat16()
        query_index, bank_index = sparse_positions(coarse <= limit[:, None])
        if len(query_index) > SHORTLIST_ROWS * len(block):
            exact_distances, exact_indices = nearest_neighbours(block, bank, budget=budget)
            distances.append(exact_distances)
            indices.append(exact_indices)
            continue
        squared = (block[query_index] - bank[bank_index]).square_().sum(dim=1)
        nearest = squared.new_full((len(block),), float("inf")).scatter_reduce_(0, query_index, squared, "amin")
        winner = squared == nearest[query_index]
        index = bank_index.new_full((len(block),), bank.shape[0]).scatter_reduce_(0, query_index[winner], bank_index[winner], "amin")
        distances.append(nearest.sqrt_())
        indices.append(index)
    if not distances:
        return queries.new_zeros(0), torch.zeros(0, dtype=torch.long, device=queries.device)
    return torch.cat(distances), torch.cat(indices)


def sparse_positions(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column indices of the True entries of a mostly False (N, M) bool matrix.

    Read 8 entries at a time as one 64-bit word when M allows: ``nonzero``
    then scans an eighth of the entries, and only the few nonzero words are
    opened.
    """
    if mask.shape[1] % 8 or not mask.is_contiguous():
        return mask.nonzero(as_tuple=True)
    word_rows, word_columns = mask.view(torch.int64).nonzero(as_tuple=True)
    rows = word_rows.repeat_interleave(8)
    columns = (word_columns[:, None] * 8 + torch.arange(8, device=mask.device)).flatten()
    kept = mask[rows, columns]
    return rows[kept], columns[kept]
