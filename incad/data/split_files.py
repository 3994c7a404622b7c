"""Published per-step split files: a scenario's classes, steps and per-step train/test samples read from files.

The public code of the papers publishes its protocols as one list of samples
per step and split, so that a comparison uses exactly their samples:

- ``ib_iumad`` (IB-IUMAD, ``experiments/MVTec_3DAD/<setting>/*.json``) and
  ``cdad_json`` (CDAD / One-for-More, ``data/MVTec-AD/<setting>/{train,test}_<k>.json``):
  the UniAD/IUF meta format, one JSON object per line (a JSON array is read too)
  with ``filename`` (the RGB image), ``label`` (0 good, 1 defective),
  ``label_name``, ``clsname`` and, for defects, ``maskname``; IB-IUMAD adds
  ``filename_xyz`` (the point map).
- ``cdad_csv`` (CDAD, ``data/VisA/<setting>/*.csv``): VisA's split CSV
  (``split_csv/1cls.csv``) columns ``object,split,label,image,mask`` with
  ``label`` ``normal`` or ``anomaly`` and an empty ``mask`` for normal images.

Every path is relative to ``dataset.root``. A file named ``train_<key>``,
``<key>_train``, ``test_<key>`` or ``<key>_test`` holds that split of step
``<key>``; any other file is a whole step whose rows say their split (the CSV's
``split`` column; for JSON the ``train``/``validation``/``test`` folder in the
path). Steps run in natural order of their keys (``2`` before ``10``) unless
``steps`` lists the keys. A step learns the classes of its training rows in the
order the file lists them; its test experience holds the test rows of those
classes, from whichever test file lists them (test files that repeat the
classes of earlier steps, as cumulative ones do, are read once per sample).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from incad.errors import ConfigError, DataError

SplitFormat = Literal["auto", "ib_iumad", "cdad_json", "cdad_csv"]
SPLIT_FILE_SUFFIXES = (".json", ".csv")
SPLIT_NAMES = {"train": "train", "test": "test", "validation": "validation", "val": "validation"}
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
CSV_LABELS = {"normal": 0, "anomaly": 1}
_SPLIT_IN_NAME = re.compile(r"^(?:(?P<before>train|test)[_-](?P<key_after>.+)|(?P<key_before>.+)[_-](?P<after>train|test))$")


@dataclass(frozen=True)
class SplitEntry:
    """One row of a split file: a sample, its class and split, the files it names (relative to the dataset root)."""

    split: str
    class_name: str
    image: str
    points: str | None
    mask: str | None
    label: int
    source: Path  # the split file that lists it


@dataclass
class SplitPlan:
    """What the split files say: the format read, each step's classes and its train and test rows."""

    format: str
    step_keys: list[str]
    step_classes: list[list[str]]
    train: list[list[SplitEntry]] = field(default_factory=list)
    test: list[list[SplitEntry]] = field(default_factory=list)

    @property
    def class_order(self) -> list[str]:
        return [name for classes in self.step_classes for name in classes]

    def referenced_files(self) -> list[str]:
        """Every file a row names, once, in reading order."""
        names = (name for rows in self.train + self.test for row in rows for name in (row.image, row.points, row.mask))
        return list(dict.fromkeys(name for name in names if name))


def split_folder(folder: Path, dataset_root: Path | None) -> Path:
    """``scenario.split_files.folder`` resolved: as given if absolute, else under ``dataset.root`` (the working directory without one)."""
    folder = Path(folder).expanduser()
    return folder if folder.is_absolute() or dataset_root is None else Path(dataset_root) / folder


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _step_files(folder: Path) -> dict[str, dict[str, Path]]:
    """Step key -> {"train"/"test"/"all": file} for the split files of ``folder``."""
    if not folder.is_dir():
        raise DataError(folder, "is missing or not a folder.", "Set scenario.split_files.folder to the folder of the per-step split files (relative to dataset.root).")
    steps: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in SPLIT_FILE_SUFFIXES or path.name.startswith("."):
            continue
        match = _SPLIT_IN_NAME.match(path.stem)
        if match:
            key = match["key_after"] or match["key_before"]
            split = match["before"] or match["after"]
        else:
            key, split = path.stem, "all"
        steps.setdefault(key, {})[split] = path
    if not steps:
        raise DataError(folder, "holds no split file (*.json or *.csv).", "Put the per-step split files there or fix scenario.split_files.folder.")
    return steps


def detect_format(files: list[Path]) -> str:
    """``cdad_csv`` for CSV files; for JSON ``ib_iumad`` when a row names a point map (``filename_xyz``), else ``cdad_json``."""
    suffixes = {path.suffix.lower() for path in files}
    if suffixes == {".csv"}:
        return "cdad_csv"
    if suffixes != {".json"}:
        raise ConfigError(
            f"scenario.split_files: {files[0].parent} mixes CSV and JSON split files; keep one format per folder"
        )
    for path in files:
        if any("filename_xyz" in row for row in _json_rows(path)):
            return "ib_iumad"
    return "cdad_json"


def _json_rows(path: Path) -> list[dict]:
    """The objects of a UniAD/IUF meta file: one per line, or one JSON array."""
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        rows = whole
    elif isinstance(whole, dict):
        rows = [whole]
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {number} is not JSON ({exc.msg}).", "Each line of a split file is one JSON object.") from None
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "filename" not in row:
            raise DataError(path, f"row {number} has no 'filename'.", "Rows of a UniAD/IUF split file name their image under 'filename'.")
    return rows


def _split_from_path(image: str) -> str | None:
    for part in PurePosixPath(image).parts:
        if part in SPLIT_NAMES:
            return SPLIT_NAMES[part]
    return None


def _label(path: Path, value, mapping: dict | None = None) -> int:
    if mapping is not None:
        if value not in mapping:
            raise DataError(path, f"has the label {value!r}; expected one of {', '.join(mapping)}.", "Fix the row's label.")
        return mapping[value]
    if value not in (0, 1, "0", "1"):
        raise DataError(path, f"has the label {value!r}; expected 0 (good) or 1 (defective).", "Fix the row's label.")
    return int(value)


def read_entries(path: Path, fmt: str, split: str) -> list[SplitEntry]:
    """The rows of one split file; ``split`` is the file's split from its name, or ``all`` when each row says it."""
    entries = []
    if fmt == "cdad_csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise DataError(path, f"lacks the column(s) {', '.join(missing)}.", f"A VisA/CDAD split CSV has the header {','.join(CSV_COLUMNS)}.")
            for row in reader:
                row_split = SPLIT_NAMES.get(row["split"].strip(), None) if split == "all" else split
                if row_split is None:
                    raise DataError(path, f"has the split {row['split']!r}; expected train or test.", "Fix the row's split.")
                mask = row["mask"].strip() or None
                entries.append(SplitEntry(row_split, row["object"].strip(), row["image"].strip(), None, mask, _label(path, row["label"].strip(), CSV_LABELS), path))
        return entries
    for row in _json_rows(path):
        image = str(row["filename"])
        row_split = split if split != "all" else _split_from_path(image)
        if row_split is None:
            raise DataError(path, f"names {image}, whose split cannot be told.", "Name the file train_<step>.json / test_<step>.json.")
        class_name = str(row.get("clsname") or PurePosixPath(image).parts[0])
        points = row.get("filename_xyz") if fmt == "ib_iumad" else None
        entries.append(SplitEntry(row_split, class_name, image, points, row.get("maskname") or None, _label(path, row.get("label", 0)), path))
    return entries


def read_split_files(folder: Path, fmt: SplitFormat = "auto", steps: list[str] | None = None) -> SplitPlan:
    """Read the per-step split files of ``folder`` into a :class:`SplitPlan`; the dataset is not touched."""
    found = _step_files(folder)
    keys = list(steps) if steps else sorted(found, key=_natural_key)
    unknown = [key for key in keys if key not in found]
    if unknown:
        raise ConfigError(
            f"scenario.split_files.steps: no split file for step(s) {', '.join(unknown)} in {folder}; steps found: {', '.join(sorted(found, key=_natural_key))}"
        )
    files = [path for key in keys for path in found[key].values()]
    fmt = detect_format(files) if fmt == "auto" else fmt
    plan = SplitPlan(fmt, keys, [])
    trained: dict[str, str] = {}
    test_rows: dict[str, list[SplitEntry]] = {}
    seen_tests: set[str] = set()
    for key in keys:
        rows = [entry for split, path in found[key].items() for entry in read_entries(path, fmt, split)]
        train = [entry for entry in rows if entry.split == "train"]
        if not train:
            raise DataError(next(iter(found[key].values())), f"gives step '{key}' no training sample.", "Each step needs its train rows (train_<step> file or rows with split train).")
        classes = list(dict.fromkeys(entry.class_name for entry in train))
        again = [name for name in classes if name in trained]
        if again:
            raise DataError(
                train[0].source, f"trains {', '.join(again)} again at step '{key}' (already trained at step '{trained[again[0]]}').", "Each class is learned at one step."
            )
        trained.update((name, key) for name in classes)
        plan.step_classes.append(classes)
        plan.train.append(train)
        for entry in rows:
            if entry.split != "test" or entry.image in seen_tests:
                continue
            if entry.class_name not in trained:
                raise DataError(entry.source, f"tests class '{entry.class_name}', which no step up to '{key}' trains.", "Check the files' step order (scenario.split_files.steps).")
            seen_tests.add(entry.image)
            test_rows.setdefault(entry.class_name, []).append(entry)
    without_test = [name for name in plan.class_order if name not in test_rows]
    if without_test:
        raise DataError(folder, f"lists no test sample of {', '.join(without_test)}.", "Add their test rows.")
    plan.test = [[entry for name in classes for entry in test_rows[name]] for classes in plan.step_classes]
    return plan


def missing_files(plan: SplitPlan, root: Path) -> list[Path]:
    """The files the plan names that are not under ``root``."""
    return [root / name for name in plan.referenced_files() if not (root / name).is_file()]


def require_files(plan: SplitPlan, root: Path, folder: Path) -> None:
    """One DataError listing every file the split files name but ``root`` lacks."""
    missing = missing_files(plan, root)
    if missing:
        listed = "\n".join(f"  {path}" for path in missing)
        raise DataError(
            folder,
            f"name {len(missing)} file(s) missing under {root}:\n{listed}\n",
            "Set dataset.root to the folder the split files' paths are relative to, or fix the files.",
        )
