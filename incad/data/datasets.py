"""One entry point from ``dataset.name`` to readable samples: the :class:`PreparedDataset` of a run.

``synthetic``, ``mvtec3d`` and ``folder`` (a user's own data: any class names,
any image size, xyz optional) share the MVTec 3D-AD layout; ``eyecandies``
and ``mvtec_ad`` have their own readers (:mod:`incad.data.readers`).
:func:`prepare_dataset` resolves the folder a run reads (generating synthetic
data or preprocessing into the cache when asked) together with its reader, so
whatever reads the data afterwards asks the :class:`PreparedDataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from incad.data.dataset import AnomalyDetectionDataset
from incad.data.preprocess import preprocess_dataset
from incad.data.readers.base import LayoutReader, OnBadSample, Record
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.readers.registry import create_reader
from incad.data.synthetic import ensure_synthetic
from incad.errors import ConfigError, DataError

if TYPE_CHECKING:
    from incad.config import DatasetConfig

DEFAULT_CACHE = Path(".cache") / "incad" / "data"


def cache_root(config: "DatasetConfig") -> Path:
    """Where generated and preprocessed data go: ``dataset.cache_dir``, else $INCAD_DATA_DIR, else .cache/incad/data."""
    return Path(config.cache_dir or os.environ.get("INCAD_DATA_DIR", DEFAULT_CACHE))


@dataclass
class PreparedDataset:
    """The folder a run reads, the reader of its layout, and the source samples preprocessing left out.

    ``counts`` (class -> split -> samples) is filled by preprocessing; see
    :meth:`sample_counts` for any folder.
    """

    root: Path
    reader: LayoutReader
    skipped: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def list_classes(self, skipped: list | None = None) -> list[str]:
        """The class folders of ``root``; with ``skipped`` a folder that is no class is listed there instead of raising."""
        return self.reader.list_classes(self.root, skipped)

    def sample_counts(self, classes: list[str] | None = None) -> dict[str, dict[str, int]]:
        """Samples per class and split (validation only where the layout has it)."""
        counts = {}
        for class_name in classes or self.list_classes():
            counts[class_name] = {
                split: len(self.reader.list_records(self.root, class_name, split))
                for split, folder in self.reader.splits.items()
                if split != "validation" or (self.root / class_name / folder).is_dir()
            }
        return counts

    def split(
        self,
        classes: list[str],
        split: str,
        object_ids: dict[str, int],
        load_xyz: bool,
        image_size: int,
        on_bad_sample: OnBadSample = "error",
        shots: int | None = None,
        shot_seed: int = 0,
        records: list[Record] | None = None,
    ) -> AnomalyDetectionDataset:
        """The samples of ``classes`` in ``split`` (or the given ``records``); point clouds only if the layout has them; ``shots`` per class if given."""
        if load_xyz and not self.reader.has_points:
            raise ConfigError(f"scenario.modality: dataset '{self.reader.name}' has RGB images only; use scenario.modality: rgb")
        return AnomalyDetectionDataset(
            self.root,
            class_names=classes,
            split=split,
            image_size=image_size,
            object_ids=object_ids,
            load_xyz=load_xyz,
            reader=self.reader,
            on_bad_sample=on_bad_sample,
            shots=shots,
            shot_seed=shot_seed,
            records=records,
        )


def prepare_dataset(config: "DatasetConfig", classes: list[str] | None = None, show_progress: bool = True) -> PreparedDataset:
    """Generate (synthetic) or check the source folder, then preprocess into the cache if enabled.

    A preprocessed cache is always in the MVTec 3D-AD layout, so it is read by
    the MVTec 3D-AD reader whatever the source layout was.
    """
    reader = create_reader(config.name, config.light)
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
