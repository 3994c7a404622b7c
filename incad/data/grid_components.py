"""The largest connected component of an organized point cloud's pixel grid (numba union-find).

Two valid pixels are connected when they are 8-neighbours and their points lie closer than
``eps`` in 3-D: on an organized cloud this finds the object as DBSCAN does over the
unorganized points (BTF's preprocessing, ``incad/data/preprocess.py``), with one pass over
the pixels and no radius search. scipy.ndimage's labelling cannot cut an edge by its length,
hence the union-find (path halving, union by index).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# The four neighbours ahead in row-major order; with each pixel's own four, all 8 are covered.
_FORWARD_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


@njit(inline="always")
def _root(parent, node):  # pragma: no cover - compiled
    while parent[node] != node:
        parent[node] = parent[parent[node]]  # path halving
        node = parent[node]
    return node


@njit(cache=True)
def _component_labels(points, candidates, eps):  # pragma: no cover - compiled
    """Each pixel's component root (row-major index); -1 off ``candidates``."""
    height, width = candidates.shape
    parent = np.arange(height * width)
    eps_squared = eps * eps
    for row in range(height):
        for column in range(width):
            if not candidates[row, column]:
                continue
            here = row * width + column
            for row_step, column_step in _FORWARD_NEIGHBOURS:
                other_row, other_column = row + row_step, column + column_step
                if other_row >= height or other_column < 0 or other_column >= width:
                    continue
                if not candidates[other_row, other_column]:
                    continue
                squared = 0.0
                for axis in range(3):
                    difference = float(points[row, column, axis]) - float(points[other_row, other_column, axis])
                    squared += difference * difference
                if squared < eps_squared:
                    a, b = _root(parent, here), _root(parent, other_row * width + other_column)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    labels = np.full(height * width, -1)
    for node in range(height * width):
        if candidates[node // width, node % width]:
            labels[node] = _root(parent, node)
    return labels.reshape(height, width)


def largest_grid_component(points: np.ndarray, candidates: np.ndarray, eps: float) -> np.ndarray:
    """(H, W) bool: the largest component of ``candidates`` (ties: the one starting first in row-major order)."""
    labels = _component_labels(np.ascontiguousarray(points), np.ascontiguousarray(candidates), float(eps))
    sizes = np.bincount(labels[labels >= 0])
    return labels == sizes.argmax()
