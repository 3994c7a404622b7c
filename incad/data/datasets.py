"""One entry point from ``dataset.name`` to readable samples: the reader family.

``synthetic``, ``mvtec3d`` and ``folder`` (a user's own data: any class names,
any image size, xyz optional) share the MVTec 3D-AD layout; ``eyecandies``
and ``mvtec_ad`` have their own readers. :func:`prepare_dataset` resolves the
folder a run reads (generating synthetic data or preprocessing into the cache
when asked), :func:`split_dataset` builds the dataset of one split.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from incad.data.eyecandies import EyecandiesReader
from incad.data.mvtec3d import MVTEC3D, MVTec3DDataset, MVTec3DReader
from incad.data.mvtec_ad import MVTecADReader
from incad.data.preprocess import MANIFEST, preprocess_dataset
from incad.data.synthetic import ensure_synthetic
from incad.errors import ConfigError, DataError

if TYPE_CHECKING:
    from incad.config import DatasetConfig

DEFAULT_CACHE = Path(".cache") / "incad" / "data"
DATASET_NAMES = ("synthetic", "mvtec3d", "folder", "eyecandies", "mvtec_ad")


def cache_root(config: "DatasetConfig") -> Path:
    """Where generated and preprocessed data go: ``dataset.cache_dir``, else $INCAD_DATA_DIR, else .cache/incad/data."""
    return Path(config.cache_dir or os.environ.get("INCAD_DATA_DIR", DEFAULT_CACHE))


def reader_for(name: str, light: int = 4) -> MVTec3DReader:
    """The reader of a dataset name (``light`` picks Eyecandies' RGB image)."""
    if name == "eyecandies":
        return EyecandiesReader(light)
    if name == "mvtec_ad":
        return MVTecADReader()
    if name in DATASET_NAMES:
        return MVTEC3D
    raise ConfigError(f"dataset.name: unknown dataset '{name}'; allowed: {', '.join(DATASET_NAMES)}")


@dataclass
class PreparedDataset:
    """The folder a run reads, its reader, and the source samples preprocessing left out."""

    root: Path
    reader: MVTec3DReader
    skipped: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def prepare_dataset(config: "DatasetConfig", classes: list[str] | None = None, show_progress: bool = True) -> PreparedDataset:
    """Generate (synthetic) or check the source folder, then preprocess into the cache if enabled.

    A preprocessed cache is always in the MVTec 3D-AD layout, so it is read by
    the MVTec 3D-AD reader whatever the source layout was.
    """
    reader = reader_for(config.name, config.light)
    if config.name == "synthetic":
        root = ensure_synthetic(config.synthetic, config.root or cache_root(config))
    else:
        root = Path(config.root)
        if not root.is_dir():
            raise DataError(root, "dataset folder not found.", "Set dataset.root to the folder that holds one sub-folder per class.")
    if not config.preprocessing.enabled:
        return PreparedDataset(root, reader)
    if not reader.has_points:
        raise ConfigError(f"dataset.preprocessing.enabled: dataset '{config.name}' has no point clouds to preprocess; set it to false")
    result = preprocess_dataset(
        reader, root, config.preprocessing, cache_root(config), classes, config.on_bad_sample, show_progress
    )
    return PreparedDataset(result.root, MVTEC3D, result.skipped, result.counts)


def preprocessing_skipped(root: Path) -> list[str]:
    """The source samples that preprocessing left out of the cache at ``root`` (none for other folders)."""
    manifest = Path(root) / MANIFEST
    return list(json.loads(manifest.read_text())["skipped"]) if manifest.is_file() else []


def reader_of_root(config: "DatasetConfig", root: Path) -> MVTec3DReader:
    """The reader for ``root``: the MVTec 3D-AD one for a preprocessed cache, else the dataset's own."""
    return MVTEC3D if (Path(root) / MANIFEST).is_file() else reader_for(config.name, config.light)


def sample_counts(config: "DatasetConfig", root: Path, classes: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Samples per class and split of the folder a run reads (validation only where the layout has it)."""
    reader = reader_of_root(config, root)
    counts = {}
    for class_name in classes or reader.list_classes(root):
        counts[class_name] = {
            split: len(reader.list_records(root, class_name, split))
            for split, folder in reader.splits.items()
            if split != "validation" or (Path(root) / class_name / folder).is_dir()
        }
    return counts


def split_dataset(
    config: "DatasetConfig",
    root: Path,
    classes: list[str],
    split: str,
    object_ids: dict[str, int],
    load_xyz: bool,
) -> MVTec3DDataset:
    """The samples of ``classes`` in ``split``, read with the right reader and ``on_bad_sample`` policy."""
    reader = reader_of_root(config, root)
    if load_xyz and not reader.has_points:
        raise ConfigError(f"scenario.modality: dataset '{config.name}' has RGB images only; use scenario.modality: rgb")
    return MVTec3DDataset(
        root,
        class_names=classes,
        split=split,
        image_size=config.image_size,
        object_ids=object_ids,
        load_xyz=load_xyz,
        reader=reader,
        on_bad_sample=config.on_bad_sample,
    )
