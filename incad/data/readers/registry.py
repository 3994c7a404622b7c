"""Layout readers by dataset name: ``@register_reader(name)`` at each reader class, :func:`create_reader` to build one."""

from __future__ import annotations

from incad.data.readers.base import LayoutReader
from incad.registry import Registry

DATASET_READERS: Registry[type[LayoutReader]] = Registry("dataset")
register_reader = DATASET_READERS.register


def create_reader(name: str, light: int = 4) -> LayoutReader:
    """The reader of dataset ``name`` (``light`` picks Eyecandies' RGB image)."""
    return DATASET_READERS.get(name).create(light)
