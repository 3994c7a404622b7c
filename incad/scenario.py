"""From a validated config to an Avalanche class-incremental benchmark.

Each step ("B-I with S steps") is one training experience holding the normal
training samples of that step's classes, and one test experience holding the
test samples of the same classes; after training step ``s`` the runner
evaluates test experiences ``0..s``, i.e. every class seen so far. Object ids
follow the scenario's class order and travel with every sample. With
``scenario.split_files`` the classes, steps and samples of each step come from
a published protocol's files (:mod:`incad.data.split_files`); each sample is
the dataset reader's own record of the file a row names, so the benchmark is
the one the equivalent "B-I with S steps" scenario builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute

from incad.config import RunConfig
from incad.data.datasets import PreparedDataset
from incad.data.readers.base import Record
from incad.data.sample import collate
from incad.data.split_files import SplitEntry, SplitPlan, read_split_files, require_files, split_folder
from incad.errors import ConfigError, DataError


@dataclass
class Scenario:
    """The benchmark plus the facts about it that reports need."""

    benchmark: CLScenario
    class_order: list[str]
    step_classes: list[list[str]]
    skipped: list[str] = field(default_factory=list)  # bad samples left out (dataset.on_bad_sample: skip)
    shot_samples: dict[str, list[str]] = field(default_factory=dict)  # dataset.shots: each class's training samples

    @property
    def num_steps(self) -> int:
        return len(self.step_classes)


def resolve_class_order(config: RunConfig, prepared: PreparedDataset, skipped: list | None = None) -> list[str]:
    """The scenario's class order, checked against the dataset's classes and the split."""
    available = prepared.list_classes(skipped)
    order = list(config.scenario.classes) or available
    unknown = [name for name in order if name not in available]
    if unknown:
        raise ConfigError(
            f"scenario.classes: unknown class(es) {unknown} in dataset {prepared.root}; allowed: {', '.join(available)}"
        )
    # Duplicates and a given list's length are refused at config load; the dataset's own classes are known only here.
    try:
        config.scenario.check_class_count(len(order), f"dataset {prepared.root} has {len(order)} ({', '.join(order)})", "scenario.classes")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return order


def read_split_plan(config: RunConfig) -> SplitPlan | None:
    """The plan of ``scenario.split_files`` (None without them); reads only the split files."""
    split_files = config.scenario.split_files
    if split_files is None:
        return None
    return read_split_files(split_folder(split_files.folder, config.dataset.root), split_files.format, split_files.steps)


def scenario_classes(config: RunConfig) -> list[str] | None:
    """The classes a run reads, known before the data is prepared: the split files' or ``scenario.classes`` (None = all)."""
    plan = read_split_plan(config)
    if plan is not None:
        return plan.class_order
    return list(config.scenario.classes) or None


def _split_file_records(
    config: RunConfig, prepared: PreparedDataset, plan: SplitPlan, skipped: list[str]
) -> tuple[list[list[Record]], list[list[Record]]]:
    """Each step's train and test records: the reader's record of every file the plan names.

    Paths are checked under ``dataset.root`` (one error lists every missing
    file) and looked up among the records the reader lists under the prepared
    root, which keeps the source's relative paths (a preprocessed MVTec 3D-AD copy does).
    """
    folder = split_folder(config.scenario.split_files.folder, config.dataset.root)
    require_files(plan, Path(config.dataset.root or prepared.root), folder)
    reader, root = prepared.reader, prepared.root
    listing_problems: list | None = None if config.dataset.on_bad_sample == "error" else []
    listed: dict[Path, Record] = {}
    for class_name in plan.class_order:
        if not (root / class_name).is_dir():
            continue  # its rows are reported below, with every other row the reader does not list
        for split, folder_name in reader.splits.items():
            if split == "validation" and not (root / class_name / folder_name).is_dir():
                continue
            for record in reader.list_records(root, class_name, split, listing_problems):
                listed[record.rgb] = record
    skipped.extend(str(problem) for problem in listing_problems or [])
    unknown: list[SplitEntry] = []

    def records(entries: list[SplitEntry]) -> list[Record]:
        found = []
        for entry in entries:
            record = listed.get(root / entry.image)
            if record is None or record.label != entry.label or record.class_name != entry.class_name:
                unknown.append(entry)
            else:
                found.append(record)
        return found

    train, test = [records(rows) for rows in plan.train], [records(rows) for rows in plan.test]
    if unknown:
        lines = [f"  {entry.image} ({entry.source.name}: class {entry.class_name}, label {entry.label})" for entry in unknown]
        problem = DataError(
            root,
            f"has no sample of its '{reader.name}' layout matching {len(unknown)} split-file row(s):\n" + "\n".join(lines) + "\n",
            "Check dataset.name and dataset.root against the split files (class folder, label and path of each row).",
        )
        if config.dataset.on_bad_sample == "error":
            raise problem
        skipped.append(str(problem))
    return train, test


def build_scenario(config: RunConfig, prepared: PreparedDataset) -> Scenario:
    """One train and one test experience per step, in the scenario's class order.

    The scenario's skipped samples are those preprocessing left out plus those found bad here.
    """
    skipping = config.dataset.on_bad_sample == "skip"
    class_problems: list = []
    plan = read_split_plan(config)
    step_records: dict[str, list[list[Record]]] = {}
    if plan is None:
        order = resolve_class_order(config, prepared, class_problems if skipping else None)
        step_classes = config.scenario.step_classes(order)
        skipped = prepared.skipped + [str(problem) for problem in class_problems]
    else:
        order, step_classes, skipped = plan.class_order, plan.step_classes, list(prepared.skipped)
        step_records["train"], step_records["test"] = _split_file_records(config, prepared, plan, skipped)
    object_ids = {name: index for index, name in enumerate(order)}

    shot_samples: dict[str, list[str]] = {}

    def experience(step: int, classes: list[str], split: str) -> AvalancheDataset:
        few_shot = split == "train" and config.dataset.shots is not None
        dataset = prepared.split(
            classes,
            split,
            object_ids,
            load_xyz=config.scenario.modality != "rgb",
            image_size=config.dataset.image_size,
            on_bad_sample=config.dataset.on_bad_sample,
            shots=config.dataset.shots if few_shot else None,
            shot_seed=config.seed,
            records=step_records[split][step] if step_records else None,
        )
        skipped.extend(str(problem) for problem in dataset.skipped or [])
        if few_shot:
            for record in dataset.records:
                shot_samples.setdefault(record.class_name, []).append(str(record.rgb.relative_to(prepared.root)))
        # collate_fn travels with every subset and concatenation, so Avalanche's own loaders (replay) build Batch objects too.
        return AvalancheDataset([dataset], data_attributes=[DataAttribute(dataset.object_ids_per_sample, "targets")], collate_fn=collate)

    train = [experience(step, classes, "train") for step, classes in enumerate(step_classes)]
    test = [experience(step, classes, "test") for step, classes in enumerate(step_classes)]
    return Scenario(benchmark_from_datasets(train=train, test=test), order, step_classes, skipped, shot_samples)
