"""Frozen-backbone features on disk, shared by every epoch, step, strategy and run.

One ``.npy`` file per (sample, modality, input shape) key, named by the key's
hash, read back memory-mapped so only the rows a batch needs are paged in and
the operating system's page cache does the rest. Files are written to a
temporary name and renamed, so a crash or a concurrent run never leaves a half
file that would be read as features. The folder must be specific to one
dataset version and one backbone: :func:`store_folder` builds that name.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
from torch import nn

from incad.data.fingerprint import folder_fingerprint


def module_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's class and its frozen state (parameters that take no gradient, and buffers).

    Cached features may only depend on frozen weights, so trainable heads of a
    learner whose method extracts them do not split the cache.
    """
    digest = hashlib.sha256(type(module).__qualname__.encode())
    frozen = {name: p for name, p in module.named_parameters() if not p.requires_grad}
    frozen.update(module.named_buffers())
    for name, tensor in sorted(frozen.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def store_folder(cache_root: str | Path, data_root: str | Path) -> Path:
    """``<cache_root>/features/<hash of the data folder's path and files>``; one sub-folder per backbone inside."""
    data_root = Path(data_root).resolve()
    key = hashlib.sha256(f"{data_root}|{folder_fingerprint(data_root)}".encode()).hexdigest()[:16]
    return Path(cache_root) / "features" / key


class DiskFeatureStore:
    """A folder of memory-mapped feature arrays, one per key."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The stored array (memory-mapped, read-only), or None."""
        path = self._path(key)
        return np.load(path, mmap_mode="r") if path.is_file() else None

    def put(self, key: str, features: np.ndarray) -> None:
        path = self._path(key)
        partial = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.npy")
        np.save(partial, np.ascontiguousarray(features))
        os.replace(partial, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.npy"))
