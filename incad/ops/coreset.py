"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling), exact and fast on a CPU.

Greedy k-center picks, again and again, the point farthest from everything
picked so far. The plain loop (anomalib's ``KCenterGreedy``) recomputes the
distance of *every* point to each new centre: N x d memory traffic per pick,
N x d x k in all, which is what makes PatchCore's fit slow.

This implementation returns the same selection as that plain loop (in the
space it selects in, up to float rounding) while looking at a few hundred
points per pick:

1. the points are split into ``groups`` cells: each point goes to the nearest
   of ``groups`` seeded random points (so cells follow the density and stay
   about equally full), stored cell by cell; a cell knows its centre and its
   radius ``r`` (farthest member);
2. every cell keeps an *upper bound* ``m`` of its members' min-distances
   (exact when the cell was last refreshed: min-distances only shrink);
3. to pick, take the cell with the largest bound and refresh it: its members'
   min-distances against the centres picked since its last refresh, in one
   small matrix product, skipping centres ``z`` that the triangle inequality
   rules out (``d(z, cell centre) >= r + m``). If its exact maximum is still
   the largest bound, its farthest member is the greedy pick (every other
   cell's maximum is at most its bound); otherwise the next cell is refreshed.

So a pick costs the refresh of the one to three cells at the top instead of
a pass over all N points. On real patch features the selection is the plain
loop's and does a fraction of its distance work, in small products.
Distances are computed as ``|x|^2 + |z|^2 - 2 x.z`` (matrix products read
each point once); in float32 near-ties may resolve differently from another
formula, in float64 the selection equals the plain loop's.

``projection_dim`` selects in a seeded Gaussian random projection of the
features (as PatchCore does, to cut the per-point cost); that is the one
approximation, and ``coverage_radius`` measures its effect in the original
space: on real patch features a projection made the coverage radius clearly
worse than exact greedy (so did anomalib's sparse projection), so the default
is no projection. ``benchmarks/bench_coreset.py`` prints seconds and coverage
of each (figures in README, Benchmarks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from incad.ops.nearest import nearest_neighbours, partial_squared_distances

# A centre is skipped for a cell only when its bound clears the cell's reach by this relative margin,
# so float rounding in the bound can never skip a centre the plain loop would have counted.
PRUNING_SLACK = 1e-4


def nearest_squared_distances(points: Tensor, point_norms: Tensor, centres: Tensor, centre_norms: Tensor) -> Tensor:
    """(N,) squared distance of each row of ``points`` to its nearest row of ``centres`` (norms given squared).

    ``min_z(|z|^2 - 2 x.z) + |x|^2``: one fused matrix product, and ``|x|^2`` added after the minimum.
    """
    return partial_squared_distances(points, centres, centre_norms).amin(dim=1).add_(point_norms).clamp_min_(0.0)


def random_projection(features: Tensor, projection_dim: int | None, seed: int) -> Tensor:
    """(N, d) features through a seeded Gaussian projection to ``projection_dim`` columns (distances kept in expectation).

    Unchanged when ``projection_dim`` is None or not below d.
    """
    dim = features.shape[1]
    if projection_dim is None or projection_dim >= dim:
        return features
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(dim, projection_dim, generator=generator) / math.sqrt(projection_dim)
    return features @ matrix.to(features.device, features.dtype)


def default_groups(num_points: int) -> int:
    """Cells: about sqrt(N) (fewer cells are fuller and costlier to refresh, more cost more bounds per pick)."""
    return max(1, round(math.sqrt(num_points)))


@torch.no_grad()
def greedy_coreset(
    features: Tensor,
    size: int,
    projection_dim: int | None = None,
    seed: int = 0,
    groups: int | None = None,
) -> Tensor:
    """Indices (k,) of a greedy k-center selection of ``size`` rows of (N, d) ``features``, in order of selection.

    The first pick is a seeded random row. Selection stops early (k < size)
    once every row coincides with a pick. Float64 features are selected in
    float64, anything else in float32. ``groups``: cells of the pruning
    (default :func:`default_groups`; 0 = the plain loop, for reference).
    """
    num_points = features.shape[0]
    size = min(int(size), num_points)
    if size <= 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    points = random_projection(features.to(dtype), projection_dim, seed)
    first = int(torch.randint(num_points, (1,), generator=torch.Generator().manual_seed(seed)))
    groups = default_groups(num_points) if groups is None else min(groups, num_points)
    return _GreedySelection(points, first).run(size, groups, seed)


class _GreedySelection:
    """State of one greedy k-center run: the plain phase, then the lazy cell phase."""

    def __init__(self, points: Tensor, first: int) -> None:
        self.points = points
        self.norms = (points * points).sum(dim=1)
        self.min_distance = torch.full_like(self.norms, float("inf"))  # squared
        self.selected = [first]

    def run(self, size: int, groups: int, seed: int) -> Tensor:
        next_pick = self.plain_phase(size if groups == 0 else 1)
        if next_pick is not None and len(self.selected) < size:
            self.cell_phase(size, groups, next_pick, seed)
        return torch.tensor(self.selected, dtype=torch.long, device=self.points.device)

    def plain_phase(self, picks: int) -> int | None:
        """Update every point for each of the first ``picks`` centres; the index of the next pick (None: all covered)."""
        while True:
            centre = self.selected[-1]
            distance = (self.norms + self.norms[centre] - 2.0 * (self.points @ self.points[centre])).clamp_min_(0.0)
            self.min_distance = torch.minimum(self.min_distance, distance)
            farthest = int(self.min_distance.argmax())
            if self.min_distance[farthest] <= 0:
                return None
            if len(self.selected) == picks:
                return farthest
            self.selected.append(farthest)

    def cell_phase(self, size: int, groups: int, next_pick: int, seed: int) -> None:
        """Pick the rest, refreshing only the cell at the top of the bounds (see the module docstring)."""
        generator = torch.Generator().manual_seed(seed + 1)
        cell_index = torch.randperm(len(self.points), generator=generator)[:groups].to(self.points.device)
        cell_centres, cell_norms = self.points[cell_index], self.norms[cell_index]
        to_centre, owner = nearest_neighbours(self.points, cell_centres)
        order = torch.argsort(owner, stable=True)
        position_of = torch.empty_like(order)
        position_of[order] = torch.arange(len(order), device=order.device)
        points, norms, min_distance = self.points[order], self.norms[order], self.min_distance[order]
        counts = torch.bincount(owner, minlength=groups)
        radius = torch.segment_reduce(to_centre[order], "max", lengths=counts, initial=0.0)
        bound = torch.segment_reduce(min_distance, "max", lengths=counts, initial=0.0)
        radius = radius.tolist()
        centres = points.new_empty(size, points.shape[1])
        centre_norms = norms.new_empty(size)
        reach_of = norms.new_empty(groups, size)  # distance of every pick to every cell centre
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        ends = torch.cumsum(counts, 0).tolist()
        refreshed = [len(self.selected)] * groups  # picks each cell's min-distances account for
        position = int(position_of[next_pick])
        while True:
            picked = len(self.selected)
            self.selected.append(int(order[position]))
            centres[picked], centre_norms[picked] = points[position], norms[position]
            to_cells = torch.addmv(cell_norms + norms[position], cell_centres, points[position], alpha=-2.0)
            reach_of[:, picked] = to_cells.clamp_min_(0.0).sqrt_()
            if picked + 1 == size:
                return
            while True:
                cell = int(bound.argmax())
                top = float(bound[cell])
                if top <= 0:
                    return
                start, end, first = starts[cell], ends[cell], refreshed[cell]
                if first == picked + 1:
                    position = start + int(min_distance[start:end].argmax())
                    break
                reach = (radius[cell] + math.sqrt(top)) * (1 + PRUNING_SLACK)
                near = reach_of[cell, first : picked + 1].lt(reach).nonzero().squeeze(1).add_(first)
                refreshed[cell] = picked + 1
                members = min_distance[start:end]
                if len(near):
                    nearest = nearest_squared_distances(points[start:end], norms[start:end], centres[near], centre_norms[near])
                    torch.minimum(members, nearest, out=members)
                bound[cell] = members.max()


def coverage_radius(features: Tensor, bank: Tensor) -> float:
    """The largest distance from a row of (N, d) ``features`` to its nearest row of the (M, d) ``bank``."""
    return float(nearest_neighbours(features, bank)[0].max())
