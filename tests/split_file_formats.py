"""Writers of small split files in the published protocols' own formats, from records a reader lists.

- IB-IUMAD / UniAD / IUF meta (``ib_iumad``, ``cdad_json``): one JSON object per line,
  ``{"filename", "label", "label_name", "clsname"[, "maskname"][, "filename_xyz"]}``,
  paths relative to the dataset root (as in DiAD's ``training/mvtec3d/mvtec3d_test.json``).
- VisA's split CSV (``cdad_csv``, ``split_csv/1cls.csv``): header ``object,split,label,image,mask``,
  labels ``normal``/``anomaly``, empty mask for normal images.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from incad.data.readers.base import LayoutReader, Record


def records_of(reader: LayoutReader, root: Path, classes: list[str], split: str) -> list[Record]:
    return [record for name in classes for record in reader.list_records(root, name, split)]


def meta_row(record: Record, root: Path, with_xyz: bool) -> dict:
    row = {
        "filename": record.rgb.relative_to(root).as_posix(),
        "label": record.label,
        "label_name": "defective" if record.label else "good",
        "clsname": record.class_name,
    }
    if record.gt is not None:
        row["maskname"] = record.gt.relative_to(root).as_posix()
    if with_xyz:
        row["filename_xyz"] = record.points_file.relative_to(root).as_posix()
    return row


def write_meta(path: Path, records: list[Record], root: Path, with_xyz: bool = False) -> Path:
    """A UniAD/IUF meta file: one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(meta_row(record, root, with_xyz)) + "\n" for record in records))
    return path


def write_split_csv(path: Path, rows: list[tuple[str, Record]], root: Path) -> Path:
    """VisA's split CSV: (split, record) rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        for split, record in rows:
            mask = record.gt.relative_to(root).as_posix() if record.gt is not None else ""
            writer.writerow([record.class_name, split, "anomaly" if record.label else "normal", record.rgb.relative_to(root).as_posix(), mask])
    return path
