"""Reader for VisA (RGB only), with the official one-class split, for the RGB-only scenarios of IUF, RLR and CDAD.

Layout::

    <root>/<class>/Data/Images/Normal/NNNN.JPG
    <root>/<class>/Data/Images/Anomaly/NNN.JPG
    <root>/<class>/Data/Masks/Anomaly/NNN.png
    <root>/split_csv/1cls.csv

VisA's folders do not say which images are for training: the official split
``split_csv/1cls.csv`` (columns ``object,split,label,image,mask``, labels
``normal``/``anomaly``, paths relative to the root) does, and it puts some
normal images into the test split. Masks are 8-bit PNGs whose non-zero values
mark the defect. There is no point cloud and no validation split: scenarios use
``scenario.modality: rgb``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from incad.data.readers.base import GOOD, LayoutReader, Record, missing_mask, report, require_file
from incad.data.readers.registry import register_reader
from incad.errors import DataError

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
ANOMALY = "anomaly"  # VisA names no defect types: every defect is "anomaly"


@register_reader("visa")
class VisAReader(LayoutReader):
    """VisA samples as the official split lists them: an RGB image and, for anomalies, a mask."""

    name = "visa"
    splits = {"train": "train", "test": "test"}
    class_markers = ("Data",)
    has_points = False

    def __init__(self) -> None:
        self._rows: dict[tuple[Path, int], list[dict[str, str]]] = {}

    def split_rows(self, root: Path) -> list[dict[str, str]]:
        """The rows of ``split_csv/1cls.csv``, read once per file version."""
        path = Path(root) / SPLIT_CSV
        require_file_with_hint(path)
        key = (path, path.stat().st_mtime_ns)
        if key not in self._rows:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(path, f"lacks the column(s) {', '.join(missing)}.", f"VisA's split CSV has the header {','.join(COLUMNS)}.")
                self._rows[key] = [{name: (row[name] or "").strip() for name in COLUMNS} for row in reader]
        return self._rows[key]

    def list_classes(self, root: Path, skipped: list[DataError] | None = None) -> list[str]:
        """The classes of the split file, sorted; each must have its folder (``split_csv/`` is no class)."""
        root = Path(root)
        classes = sorted({row["object"] for row in self.split_rows(root)})
        for class_name in classes:
            if not (root / class_name / "Data").is_dir():
                report(DataError(root / class_name / "Data", f"is missing: {SPLIT_CSV} lists class '{class_name}'.", "Extract the class's folder into dataset.root."), skipped)
        return [name for name in classes if (root / name / "Data").is_dir()]

    def list_records(self, root: Path, class_name: str, split: str, skipped: list[DataError] | None = None) -> list[Record]:
        if split not in self.splits:
            raise DataError(Path(root) / class_name / split, "does not exist in VisA, whose official split has train and test only.")
        root = Path(root)
        rows = [row for row in self.split_rows(root) if row["object"] == class_name and row["split"] == split]
        if not rows:
            raise DataError(root / SPLIT_CSV, f"lists no {split} image of class '{class_name}'.", "Use the official split_csv/1cls.csv of VisA.")
        records = []
        for row in rows:
            if row["label"] not in LABELS:
                raise DataError(root / SPLIT_CSV, f"gives {row['image']} the label {row['label']!r}; expected normal or anomaly.", "Use the official split file.")
            label = LABELS[row["label"]]
            rgb = root / row["image"]
            gt = root / row["mask"] if label else None
            try:
                require_file(rgb)
                if gt is not None and not row["mask"]:
                    raise missing_mask(root / SPLIT_CSV, rgb)
                if gt is not None and not gt.is_file():
                    raise missing_mask(gt, rgb)
            except DataError as problem:
                report(problem, skipped)
                continue
            records.append(Record(rgb, None, gt, class_name, ANOMALY if label else GOOD, label))
        return sorted(records, key=lambda record: record.rgb)


def require_file_with_hint(path: Path) -> None:
    """The split file must exist: without it VisA has no train/test split."""
    if not path.is_file():
        raise DataError(
            path,
            "is missing: VisA's train/test split comes from the official split_csv/1cls.csv.",
            "Copy split_csv/1cls.csv of the VisA release (github.com/amazon-science/spot-diff) into dataset.root.",
        )
