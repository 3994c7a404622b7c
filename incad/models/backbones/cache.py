"""Cache of frozen-backbone features, in memory or on disk.

The backbone never changes and samples load deterministically, so a sample's
features are the same at every epoch, step and evaluation: computing them once
is what makes CPU training practical. Feature jitter is applied afterwards, per
batch. The cache is keyed by (sample path, modality, input shape) and lives
outside the module's state, so it never reaches a checkpoint. By default it
lives in memory for one run; :func:`attach_disk_store` (``training.feature_cache:
disk``) moves it to a :class:`DiskFeatureStore` so later runs reuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from incad.models.backbones.feature_store import DiskFeatureStore, module_fingerprint


class FeatureCache:
    """Remembers ``extract(images)`` row by row under caller-given keys."""

    def __init__(self, extract: Callable[[Tensor], Tensor], store: DiskFeatureStore | None = None) -> None:
        self.extract = extract
        self.store = store
        self._features: dict[tuple, Tensor] = {}

    def __len__(self) -> int:
        return len(self.store) if self.store is not None else len(self._features)

    def extractor_fingerprint(self) -> str:
        """Identifies the extractor: a module's method with that module's frozen weights, or a plain function by name."""
        owner = getattr(self.extract, "__self__", None)
        name = getattr(self.extract, "__qualname__", type(self.extract).__qualname__)
        if isinstance(owner, nn.Module):
            return f"{name}-{module_fingerprint(owner)}"
        return f"{getattr(self.extract, '__module__', '')}.{name}"

    def __call__(self, images: Tensor, keys: Sequence[str]) -> Tensor:
        if len(keys) != images.shape[0]:
            raise ValueError(f"{len(keys)} cache keys for a batch of {images.shape[0]} images")
        shape = tuple(images.shape[1:])
        found = [self._lookup(key, shape) for key in keys]
        missing = [row for row, features in enumerate(found) if features is None]
        if missing:
            with torch.no_grad():
                computed = self.extract(images[missing]).cpu()
            for row, features in zip(missing, computed):
                self._remember(keys[row], shape, features)
                found[row] = features
        return torch.stack(found).to(images.device)

    def _lookup(self, key: str, shape: tuple) -> Tensor | None:
        if self.store is None:
            return self._features.get((key, shape))
        stored = self.store.get(f"{key}|{shape}")
        return None if stored is None else torch.from_numpy(np.array(stored))

    def _remember(self, key: str, shape: tuple, features: Tensor) -> None:
        if self.store is None:
            self._features[(key, shape)] = features
        else:
            self.store.put(f"{key}|{shape}", features.numpy())


def attach_disk_store(module: nn.Module, folder: str | Path) -> list[FeatureCache]:
    """Move every FeatureCache held by ``module`` or its sub-modules to disk under ``folder``/<extractor>."""
    caches = [value for sub in module.modules() for value in vars(sub).values() if isinstance(value, FeatureCache)]
    for cache in caches:
        cache.store = DiskFeatureStore(Path(folder) / cache.extractor_fingerprint())
    return caches
