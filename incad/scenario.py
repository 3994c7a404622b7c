"""From a validated config to an Avalanche class-incremental benchmark.

Each step ("B-I with S steps") is one training experience holding the normal
training samples of that step's classes, and one test experience holding the
test samples of the same classes; after training step ``s`` the runner
evaluates test experiences ``0..s``, i.e. every class seen so far. Object ids
follow the scenario's class order and travel with every sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute

from incad.config import RunConfig
from incad.data.datasets import PreparedDataset
from incad.data.sample import collate
from incad.errors import ConfigError


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


def build_scenario(config: RunConfig, prepared: PreparedDataset) -> Scenario:
    """One train and one test experience per step, in the scenario's class order.

    The scenario's skipped samples are those preprocessing left out plus those found bad here.
    """
    skipping = config.dataset.on_bad_sample == "skip"
    class_problems: list = []
    order = resolve_class_order(config, prepared, class_problems if skipping else None)
    skipped = prepared.skipped + [str(problem) for problem in class_problems]
    object_ids = {name: index for index, name in enumerate(order)}
    step_classes = config.scenario.step_classes(order)

    shot_samples: dict[str, list[str]] = {}

    def experience(classes: list[str], split: str) -> AvalancheDataset:
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
        )
        skipped.extend(str(problem) for problem in dataset.skipped or [])
        if few_shot:
            for record in dataset.records:
                shot_samples.setdefault(record.class_name, []).append(str(record.rgb.relative_to(prepared.root)))
        # collate_fn travels with every subset and concatenation, so Avalanche's own loaders (replay) build Batch objects too.
        return AvalancheDataset([dataset], data_attributes=[DataAttribute(dataset.object_ids_per_sample, "targets")], collate_fn=collate)

    train = [experience(classes, "train") for classes in step_classes]
    test = [experience(classes, "test") for classes in step_classes]
    return Scenario(benchmark_from_datasets(train=train, test=test), order, step_classes, skipped, shot_samples)
