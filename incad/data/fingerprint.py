"""Cheap change detection for cache keys: a dataset folder's file names, sizes and modification times.

Hashing every byte of a multi-gigabyte dataset at each run would cost more
than the caches it guards; any edit, copy or re-export of a file changes its
size or modification time, which is what the key has to notice.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def folder_fingerprint(root: str | Path) -> str:
    """A hash of every file's relative path, size and modification time under ``root``."""
    root = Path(root)
    digest = hashlib.sha256()
    for directory, subdirectories, files in sorted(os.walk(root)):
        subdirectories.sort()
        for name in sorted(files):
            path = Path(directory) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
