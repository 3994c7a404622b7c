"""Reader for MVTec AD (RGB only), for the RGB-only scenarios of RLR and IUF.

Layout::

    <root>/<class>/train/good/NNN.png
    <root>/<class>/test/{good,<defect>}/NNN.png
    <root>/<class>/ground_truth/<defect>/NNN_mask.png

Grey-scale classes (grid, screw, zipper) are converted to RGB by the loader.
There is no validation split and no point cloud: scenarios use
``scenario.modality: rgb``.
"""

from __future__ import annotations

from pathlib import Path

from incad.data.readers.base import GOOD, LayoutReader, Record, missing_mask, report, require_dir
from incad.data.readers.registry import register_reader
from incad.errors import DataError


@register_reader("mvtec_ad")
class MVTecADReader(LayoutReader):
    """MVTec AD samples: an RGB image and, for defects, a mask under ground_truth/."""

    name = "mvtec_ad"
    splits = {"train": "train", "test": "test"}
    has_points = False

    def list_records(self, root: Path, class_name: str, split: str, skipped: list[DataError] | None = None) -> list[Record]:
        if split not in self.splits:
            raise DataError(Path(root) / class_name / split, "does not exist in MVTec AD, which has train/ and test/ only.")
        class_dir = Path(root) / class_name
        split_dir = class_dir / split
        require_dir(split_dir, f"the {split} split of an MVTec AD class, holding good/NNN.png (and defect folders in test/)")
        type_dirs = [split_dir / GOOD] if split == "train" else sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        records = []
        for type_dir in type_dirs:
            require_dir(type_dir, "a folder of PNG images NNN.png")
            images = sorted(type_dir.glob("*.png"))
            if not images:
                report(DataError(type_dir, "contains no PNG image.", "Add the images or remove the folder."), skipped)
            label = int(type_dir.name != GOOD)
            for rgb in images:
                gt = class_dir / "ground_truth" / type_dir.name / f"{rgb.stem}_mask.png" if label else None
                if gt is not None and not gt.is_file():
                    report(missing_mask(gt, rgb), skipped)
                    continue
                records.append(Record(rgb, None, gt, class_name, type_dir.name, label))
        return records
