"""Reader for MVTec 3D-AD's own folder layout, also that of incad's synthetic data, a user's ``folder`` and preprocessed caches.

Layout::

    <root>/<class>/{train,validation}/good/{rgb,xyz}/NNN.{png,tiff}
    <root>/<class>/test/{good,<defect>}/{rgb,xyz,gt}/NNN.{png,tiff,png}

rgb is an 8-bit RGB PNG, xyz an H x W x 3 float TIFF organized point cloud in
which (0, 0, 0) means "no point", gt an 8-bit PNG whose non-zero values (defect
ids such as 255, 254) mark defective pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from incad.data.readers.base import GOOD, SPLITS, LayoutReader, Record, load_xyz, missing_mask, report, require_dir
from incad.data.readers.registry import register_reader
from incad.errors import DataError

XYZ_SUFFIXES = (".tiff", ".tif")


@register_reader("synthetic")
@register_reader("folder")
@register_reader("mvtec3d")
class MVTec3DReader(LayoutReader):
    """MVTec 3D-AD samples: rgb/, xyz/ (optional, then RGB only) and, in test, gt/ per sample folder."""

    name = "mvtec3d"
    splits = {"train": "train", "validation": "validation", "test": "test"}

    def list_records(self, root: Path, class_name: str, split: str, skipped: list[DataError] | None = None) -> list[Record]:
        """All samples of one class and split, in file-name order (test: defect folders sorted)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        class_dir = Path(root) / class_name
        if not class_dir.is_dir():
            available = ", ".join(self.list_classes(root))
            raise DataError(
                class_dir,
                f"is missing: the dataset has no class '{class_name}'.",
                f"Expected a class folder with train/, validation/ and test/ inside; available classes: {available}.",
            )
        split_dir = class_dir / split
        if split != "test":
            require_dir(split_dir, f"the {split} split, holding good/rgb/NNN.png and good/xyz/NNN.tiff")
            return _records_of_folder(split_dir / GOOD, class_name, read_gt=False, skipped=skipped)
        require_dir(split_dir, "the test split, holding good/ and one folder per defect type, each with rgb/, xyz/ and gt/")
        type_dirs = sorted(entry for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
        if not type_dirs:
            raise DataError(
                split_dir, "contains no good/ or defect-type folder.", "Each test sample lies in test/<good or defect type>/rgb/."
            )
        return [record for type_dir in type_dirs for record in _records_of_folder(type_dir, class_name, True, skipped)]

    def read_points(self, record: Record) -> np.ndarray:
        return load_xyz(record.points_file)


MVTEC3D = MVTec3DReader()


def _records_of_folder(folder: Path, class_name: str, read_gt: bool, skipped: list[DataError] | None) -> list[Record]:
    """Pair every rgb/NNN.png of ``folder`` with its xyz/NNN.tiff and, in test, gt/NNN.png."""
    rgb_dir = folder / "rgb"
    require_dir(rgb_dir, "a folder of RGB images rgb/NNN.png")
    rgb_files = sorted(rgb_dir.glob("*.png"))
    if not rgb_files:
        raise DataError(
            rgb_dir, "contains no PNG image.", "Each sample needs rgb/NNN.png (and xyz/NNN.tiff with the same number)."
        )
    xyz_dir, gt_dir = folder / "xyz", folder / "gt"
    defect_type = folder.name
    label = 0 if defect_type == GOOD else 1
    records = []
    for rgb in rgb_files:
        try:
            xyz = _xyz_file(xyz_dir, rgb) if xyz_dir.is_dir() else None
            gt = gt_dir / f"{rgb.stem}.png" if read_gt else None
            if gt is not None and not gt.is_file():
                if label == 1:
                    raise missing_mask(gt, rgb)
                gt = None  # a good sample without a mask is simply all-good
        except DataError as problem:
            report(problem, skipped)
            continue
        records.append(Record(rgb, xyz, gt, class_name, defect_type, label))
    return records


def _xyz_file(xyz_dir: Path, rgb: Path) -> Path:
    for suffix in XYZ_SUFFIXES:
        candidate = xyz_dir / f"{rgb.stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(
        xyz_dir / f"{rgb.stem}.tiff",
        f"is missing: the RGB image {rgb} has no point cloud with the same number.",
        "Add the xyz TIFF or remove the RGB image.",
    )
