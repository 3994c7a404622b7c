"""``incad data check``: read every file of a dataset folder and list every problem with its path.

A run stops at the first bad file (or skips it); a check goes on and reports
them all at once, so a user can fix a dataset in one pass. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from incad.data.readers.base import LayoutReader
from incad.errors import DataError


@dataclass
class CheckReport:
    """Samples found per class and split, and every problem found."""

    root: Path
    dataset: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"{self.root} ({self.dataset} layout)", format_counts(self.counts)]
        if self.clean:
            lines.append("No problem found.")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    """A class x split table of sample counts."""
    splits = list(dict.fromkeys(split for per_split in counts.values() for split in per_split))
    width = max([12, *(len(name) for name in counts)])
    lines = [f"{'class':<{width}}" + "".join(f"{split:>12}" for split in splits)]
    for name, per_split in counts.items():
        lines.append(f"{name:<{width}}" + "".join(f"{per_split.get(split, 0):>12}" for split in splits))
    return "\n".join(lines)


def check_dataset(root: str | Path, reader: LayoutReader, show_progress: bool = False) -> CheckReport:
    """Every problem of the dataset at ``root``: layout, unreadable files, sizes, NaN/inf, empty scans, masks."""
    root = Path(root)
    report = CheckReport(root, reader.name)
    try:
        classes = reader.list_classes(root, report.problems)
    except DataError as problem:  # no dataset at all: nothing more to check
        report.problems.append(problem)
        return report
    records = []
    for class_name in classes:
        for split, folder in reader.splits.items():
            if split == "validation" and not (root / class_name / folder).is_dir():
                continue  # optional
            try:
                found = reader.list_records(root, class_name, split, report.problems)
            except DataError as problem:
                report.problems.append(problem)
                continue
            report.counts.setdefault(class_name, {})[split] = len(found)
            records += found
    for record in tqdm(records, desc="checking", unit="sample", disable=not show_progress):
        try:
            reader.read_sample(record, with_points=record.points_file is not None)
        except DataError as problem:
            report.problems.append(problem)
    return report
