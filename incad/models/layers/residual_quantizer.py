"""Uni-RCM's offline residual quantizer: cascaded k-means codebooks of normal features.

Level 1 quantizes L2-normalised features; every later level quantizes the
residual the levels before it left. The norm of the final residual is the
quantization error: small for features the codebooks have seen the like of,
large for anything new. The codebooks are fitted by k-means (scikit-learn,
20 iterations, one initialisation; empty clusters are re-seeded by
scikit-learn), never by gradient.

Incremental use: :meth:`ResidualQuantizer.extend` fits new centroids on the
features of a new experience only and appends them, level by level, each level
on the residuals the *extended* earlier levels leave on the new data. Old
centroids are never touched (bit-identical), and no earlier data is needed: the
old classes keep their codes, and the new ones get theirs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import Tensor, nn

from incad.models.layers.growing import register_growing_buffer

KMEANS_ITERATIONS = 20


class ResidualQuantizer(nn.Module):
    """``num_levels`` cascaded codebooks over ``dim``-dimensional features.

    The codebooks are growing buffers (:func:`register_growing_buffer`): they
    move with the module, are saved with its state dict, start empty, grow with
    every :meth:`extend` and load into a freshly built quantizer.
    """

    def __init__(self, dim: int, num_levels: int = 4, codes_per_fit: int = 256, seed: int = 0) -> None:
        super().__init__()
        if num_levels < 1 or codes_per_fit < 1:
            raise ValueError(f"need at least one level and one code per fit, got {num_levels} and {codes_per_fit}")
        self.dim = dim
        self.num_levels = num_levels
        self.codes_per_fit = codes_per_fit
        self.seed = seed
        for level in range(num_levels):
            register_growing_buffer(self, f"codebook_{level}", torch.empty(0, dim))
        self.register_buffer("fits", torch.zeros((), dtype=torch.long))

    @property
    def codebooks(self) -> list[Tensor]:
        return [getattr(self, f"codebook_{level}") for level in range(self.num_levels)]

    @property
    def is_fitted(self) -> bool:
        return self.codebooks[0].shape[0] > 0

    def residuals(self, features: Tensor, levels: int | None = None) -> list[Tensor]:
        """Residual after each of the first ``levels`` levels (all by default) for (N, dim) features."""
        if not self.is_fitted:
            raise RuntimeError("the residual quantizer has no codebook yet: call extend() on normal features first")
        residual = F.normalize(features, dim=-1)
        out = []
        for codebook in self.codebooks[: self.num_levels if levels is None else levels]:
            nearest = torch.cdist(residual, codebook).argmin(dim=-1)
            residual = residual - codebook[nearest]
            out.append(residual)
        return out

    def error(self, features: Tensor) -> Tensor:
        """Quantization error: the norm of the final residual, (..., dim) -> (...)."""
        flat = features.reshape(-1, self.dim)
        return self.residuals(flat)[-1].norm(dim=-1).reshape(features.shape[:-1])

    @torch.no_grad()
    def extend(self, features: Tensor) -> None:
        """Append ``codes_per_fit`` centroids per level, fitted on (N, dim) features of new normal data.

        The first call fits the codebooks from scratch; later calls keep every
        existing centroid and add new ones, level by level, on the residuals
        left by the already extended earlier levels.
        """
        if features.ndim != 2 or features.shape[1] != self.dim or len(features) == 0:
            raise ValueError(f"expected a non-empty (N, {self.dim}) feature matrix, got {tuple(features.shape)}")
        residual = F.normalize(features.float(), dim=-1)
        for level, codebook in enumerate(self.codebooks):
            new_codes = self._kmeans(residual, seed=self.seed + 1000 * int(self.fits) + level)
            extended = torch.cat([codebook, new_codes.to(codebook)])
            setattr(self, f"codebook_{level}", extended)
            residual = residual - extended[torch.cdist(residual, extended).argmin(dim=-1)]
        self.fits += 1

    def _kmeans(self, samples: Tensor, seed: int) -> Tensor:
        """k-means centroids of ``samples`` (as many as it has distinct rows, at most ``codes_per_fit``)."""
        points = samples.cpu().numpy().astype(np.float64)
        distinct = len(np.unique(points, axis=0))
        clusters = min(self.codes_per_fit, distinct)
        kmeans = KMeans(n_clusters=clusters, n_init=1, max_iter=KMEANS_ITERATIONS, random_state=seed).fit(points)
        return torch.from_numpy(kmeans.cluster_centers_).float()
