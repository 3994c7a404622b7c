"""Names that become folders, and writes that stay under their root.

A run name, a registered model name and a class name each become one folder
(``outputs/<name>``, ``<dataset>/<class>``, ``<cache>/<class>``). Each is
checked at config load to be a single path component, so ``../x`` or ``/x``
cannot point anywhere else; :func:`path_within` then checks the resolved path
of every write, so a symlink or a name that slipped past validation cannot
either.
"""

from __future__ import annotations

import re
from pathlib import Path

from incad.errors import ConfigError

SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
SAFE_NAME_RULE = "must be one folder name: letters, digits, '-', '_' and '.', not starting with '.' (no '/', no '..')"


def safe_name(value: str) -> str:
    """``value`` when it is a single safe folder name, else ValueError (pydantic names the key)."""
    if not SAFE_NAME.match(value):
        raise ValueError(SAFE_NAME_RULE)
    return value


def path_within(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts``, resolved, refused when it does not stay under ``root`` (resolved too)."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(
            f"{root.joinpath(*parts)} resolves to {path}, outside {root}; incad keeps its files inside that folder: "
            "replace the link or name that leads out of it"
        )
    return path
