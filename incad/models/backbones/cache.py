"""In-memory cache of frozen-backbone features.

The backbone never changes and samples load deterministically, so a sample's
features are the same at every epoch, step and evaluation: computing them once
is what makes CPU training practical. Feature jitter is applied afterwards, per
batch. The cache is keyed by (sample path, modality, input shape) and lives
outside the module's state, so it never reaches a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class FeatureCache:
    """Remembers ``extract(images)`` row by row under caller-given keys."""

    def __init__(self, extract: Callable[[Tensor], Tensor]) -> None:
        self.extract = extract
        self._features: dict[tuple, Tensor] = {}

    def __len__(self) -> int:
        return len(self._features)

    def __call__(self, images: Tensor, keys: Sequence[str]) -> Tensor:
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} cache keys for a batch of {images.shape[0]} images")
        full_keys = [(key, tuple(images.shape[1:])) for key in keys]
        missing = [row for row, key in enumerate(full_keys) if key not in self._features]
        if missing:
            with torch.no_grad():
                computed = self.extract(images[missing]).cpu()
            for row, features in zip(missing, computed):
                self._features[full_keys[row]] = features
        return torch.stack([self._features[key] for key in full_keys]).to(images.device)

    def clear(self) -> None:
        self._features.clear()
