"""Scenario: "B-I with S steps" becomes one train and one test experience per step."""

from __future__ import annotations

import pytest

from incad.config import validate_config
from incad.data.datasets import prepare_dataset
from incad.data.sample import Sample
from incad.errors import ConfigError
from incad.scenario import build_scenario
from scenario_helpers import scenario_of


def test_experiences_hold_the_right_classes_and_splits(tiny_dataset, tiny_run_config, tiny_synthetic_config):
    config = validate_config(tiny_run_config)
    scenario = build_scenario(config, prepare_dataset(config.dataset))
    assert scenario.step_classes == [["dome", "ring"], ["brick"], ["wave"]]
    train, test = scenario.benchmark.train_stream, scenario.benchmark.test_stream
    assert len(train) == len(test) == 3
    for step, classes in enumerate(scenario.step_classes):
        expected_ids = {scenario.class_order.index(name) for name in classes}
        train_samples = [train[step].dataset[i] for i in range(len(train[step].dataset))]
        assert len(train_samples) == tiny_synthetic_config.train_per_class * len(classes)
        assert all(isinstance(s, Sample) and s.label == 0 and s.defect_type == "good" for s in train_samples)
        assert {s.object_id for s in train_samples} == expected_ids
        test_samples = [test[step].dataset[i] for i in range(len(test[step].dataset))]
        assert {s.object_id for s in test_samples} == expected_ids
        assert {s.label for s in test_samples} == {0, 1}
        assert all("/test/" in s.path for s in test_samples)
        assert all(s.depth is not None and s.depth.shape == (1, 64, 64) for s in test_samples)


def test_rgb_only_scenario_loads_no_depth(tiny_dataset, tiny_run_config):
    tiny_run_config["scenario"]["modality"] = "rgb"
    scenario = scenario_of(tiny_run_config)
    assert scenario.benchmark.train_stream[0].dataset[0].depth is None


def test_unknown_class_lists_the_dataset_classes(tiny_dataset, tiny_run_config):
    tiny_run_config["scenario"]["classes"] = ["dome", "ring", "brick", "bagel"]
    with pytest.raises(ConfigError) as error:
        scenario_of(tiny_run_config)
    assert "bagel" in str(error.value) and "wave" in str(error.value)


def test_split_that_does_not_match_the_class_count(tiny_dataset, tiny_run_config):
    tiny_run_config["scenario"]["steps"] = 3
    with pytest.raises(ConfigError, match="needs exactly 5 classes but scenario.classes lists 4"):
        validate_config(tiny_run_config)


def test_split_that_does_not_match_the_dataset_classes(tiny_dataset, tiny_run_config):
    tiny_run_config["scenario"].update(classes=[], base=6, increment=0, steps=0)
    with pytest.raises(ConfigError, match="needs exactly 6 classes but dataset .* has 4 "):
        scenario_of(tiny_run_config)
