"""No test sample is read outside evaluation: every sample a full tiny run reads is recorded with its phase.

Every registered learner runs under ``naive`` and every registered strategy
with the ``reconstruction`` learner (``iuf`` needs a transformer decoder,
``cfr`` RGB + 3-D): fit, epochs, calibrate and the strategies' buffers and
importance passes read training samples of the current and earlier steps only;
evaluation reads each seen class's test samples. A strategy made to read one
test sample during training stops the run (and is seen by the recorder).
"""

from __future__ import annotations

import pytest
from avalanche.core import SupervisedPlugin

from incad.config import validate_config
from incad.data.access import EVALUATION, TRAINING_PHASES, SplitAccessError, recording_reads
from incad.learners import LEARNERS
from incad.resolve import resolve
from incad.runner import run_experiment
from incad.strategies import STRATEGIES
from scenario_helpers import scenario_of
from test_learner_state import TINY_OPTIONS

CLASSES = ["dome", "ring"]  # 1-1 with 1 step, 2 training shots per class at 32 px: seconds per run
STRATEGY_OPTIONS = {"replay": {"buffer_size": 4}}  # the presets' buffers exceed the tiny data set


def _config(tiny_dataset, tmp_path, learner: str, strategy: str) -> dict:
    return {
        "name": f"leak-{learner}-{strategy}",
        "seed": 0,
        "output_dir": str(tmp_path / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 32, "shots": 2},
        "scenario": {"classes": CLASSES, "base": 1, "increment": 1, "steps": 1, "modality": "rgb+depth"},
        "learner": {"name": learner, **TINY_OPTIONS[learner]},
        "strategy": {"name": strategy, **STRATEGY_OPTIONS.get(strategy, {})},
        "training": {"epochs": 0 if learner == "patchcore" else 1, "batch_size": 4},
        "evaluation": {"batch_size": 4},
        "tracking": {"enabled": False},
    }


def _split_paths(tiny_dataset, split: str) -> set[str]:
    return {str(path) for name in CLASSES for path in (tiny_dataset / name / split).glob("*/rgb/*.png")}


def assert_reads_respect_the_splits(reads: list[tuple], tiny_dataset, train: set[str]) -> None:
    """Training phases read the run's training samples only; evaluation reads every test sample; nothing else is read."""
    test = _split_paths(tiny_dataset, "test")
    outside = [(phase, path) for phase, split, path in reads if split == "test" and phase != EVALUATION]
    assert not outside, f"test samples read outside evaluation: {outside[:3]}"
    for phase, split, path in reads:
        assert phase in (*TRAINING_PHASES, EVALUATION), f"{path} read outside a run phase ({phase})"
        if phase in TRAINING_PHASES:
            assert split == "train" and path in train, f"{phase} read {path} ({split})"
    assert {path for phase, split, path in reads if phase == EVALUATION and split == "test"} == test
    assert {path for phase, _, path in reads if phase in TRAINING_PHASES} == train


COMBINATIONS = [(learner, "naive") for learner in LEARNERS.names()] + [
    ("reconstruction", strategy) for strategy in STRATEGIES.names() if strategy != "naive"
]


@pytest.mark.parametrize(("learner", "strategy"), COMBINATIONS)
def test_a_full_run_reads_test_samples_only_in_evaluation(tiny_dataset, tmp_path, learner, strategy):
    raw = _config(tiny_dataset, tmp_path, learner, strategy)
    shots = scenario_of(raw).shot_samples  # the run draws the same shots (same seed)
    train = {str(tiny_dataset / path) for paths in shots.values() for path in paths}
    run = resolve(validate_config(raw))
    with recording_reads() as reads:
        run_experiment(run, show_progress=False)
    assert len(train) == 2 * len(CLASSES) and train <= _split_paths(tiny_dataset, "train")
    assert_reads_respect_the_splits(reads, tiny_dataset, train)


def test_every_registered_name_is_covered():
    assert {learner for learner, _ in COMBINATIONS} == set(LEARNERS.names())
    assert {strategy for _, strategy in COMBINATIONS} == set(STRATEGIES.names())


class ReadsATestSample(SupervisedPlugin):
    """A strategy's plugin handed the test data that peeks at a sample while training (what selecting epochs on test data does)."""

    def __init__(self, test_dataset) -> None:
        super().__init__()
        self.test_dataset = test_dataset

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.test_dataset[0]


def test_a_strategy_that_reads_a_test_sample_is_stopped_and_seen(tiny_dataset, tmp_path):
    raw = _config(tiny_dataset, tmp_path, "reconstruction", "naive")
    test_dataset = scenario_of(raw).benchmark.test_stream[0].dataset
    run = resolve(validate_config(raw))
    with recording_reads() as reads, pytest.raises(SplitAccessError, match="a test sample was read during 'train'"):
        run_experiment(run, show_progress=False, extra_plugins=(ReadsATestSample(test_dataset),))
    with pytest.raises(AssertionError, match="test samples read outside evaluation"):
        assert_reads_respect_the_splits(reads, tiny_dataset, _split_paths(tiny_dataset, "train"))
