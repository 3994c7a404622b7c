"""The real MVTec 3D-AD subset of ``../shared/data`` as one dataset folder, without writing into it.

``mvtec3d_mini/cable_gland`` (20 train, 4 validation, 10 test) and
``mvtec3d_extra/cable_gland`` (60 more train, 19 more validation) are one
class of the same release; merged file by file (symbolic links) they make
80 train, 23 validation and 10 test samples.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARTS = ("mvtec3d_mini", "mvtec3d_extra")


def merged_real_root(target: Path, shared_data: Path = SHARED_DATA) -> Path:
    """A folder of links to every file of the real subsets (later parts never replace a file); returns ``target``."""
    sources = [shared_data / part for part in PARTS if (shared_data / part).is_dir()]
    if not sources:
        raise FileNotFoundError(f"no real data at {shared_data} ({' or '.join(PARTS)}): pass --root with a dataset folder")
    for source in sources:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                link = target / path.relative_to(source)
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(path.resolve(), link)
    return target
