"""``dataset.shots``: k normal training samples per class, drawn with the run's seed; validation and test untouched."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from scenario_helpers import scenario_of

from incad.config import validate_config
from incad.errors import ConfigError
from incad.runner import run_experiment


def train_paths(scenario) -> dict[int, list[str]]:
    """The training sample paths of every step."""
    return {
        step: [sample.path for sample in experience.dataset]
        for step, experience in enumerate(scenario.benchmark.train_stream)
    }


def with_shots(raw: dict, shots: int | None, seed: int = 0) -> dict:
    return {**raw, "seed": seed, "dataset": {**raw["dataset"], "shots": shots}}


def test_k_per_class_exactly_and_the_test_split_untouched(tiny_run_config):
    full = scenario_of(tiny_run_config)
    few = scenario_of(with_shots(tiny_run_config, 3))
    for step, classes in enumerate(few.step_classes):
        assert len(few.benchmark.train_stream[step].dataset) == 3 * len(classes)
        assert len(few.benchmark.test_stream[step].dataset) == len(full.benchmark.test_stream[step].dataset)
    assert {name: len(paths) for name, paths in few.shot_samples.items()} == {name: 3 for name in few.class_order}
    full_train = {path for paths in train_paths(full).values() for path in paths}
    assert {path for paths in train_paths(few).values() for path in paths} < full_train
    assert full.shot_samples == {}


def test_same_seed_same_samples_another_seed_others(tiny_run_config):
    first = scenario_of(with_shots(tiny_run_config, 2, seed=0)).shot_samples
    again = scenario_of(with_shots(tiny_run_config, 2, seed=0)).shot_samples
    other = scenario_of(with_shots(tiny_run_config, 2, seed=1)).shot_samples
    assert first == again
    assert first != other and first.keys() == other.keys()


def test_a_class_draws_the_same_samples_whatever_the_class_order(tiny_run_config):
    reordered = {**tiny_run_config, "scenario": {**tiny_run_config["scenario"], "classes": ["wave", "brick", "ring", "dome"]}}
    assert scenario_of(with_shots(tiny_run_config, 2)).shot_samples == scenario_of(with_shots(reordered, 2)).shot_samples


def test_more_shots_than_samples_names_the_class_and_its_count(tiny_run_config):
    count = len(scenario_of(tiny_run_config).benchmark.train_stream[1].dataset)  # step 1 holds one class: brick
    with pytest.raises(ConfigError, match=rf"dataset.shots: {count + 1} but class '\w+' has {count} normal training"):
        scenario_of(with_shots(tiny_run_config, count + 1))


def test_zero_shots_is_refused_at_load(tiny_run_config):
    with pytest.raises(ConfigError, match=r"dataset\.shots"):
        validate_config(with_shots(tiny_run_config, 0))


def test_a_run_records_the_drawn_samples_in_results_and_mlflow(tiny_run_config, tmp_path):
    raw = with_shots({**tiny_run_config, "device": "cpu"}, 2)
    result = run_experiment(validate_config(raw), show_progress=False)
    recorded = json.loads((result.output_dir / "results.json").read_text())["shot_samples"]
    assert recorded == scenario_of(raw).shot_samples
    assert all(len(paths) == 2 and all(path.endswith(".png") for path in paths) for paths in recorded.values())
    client = mlflow.MlflowClient(raw["tracking"]["tracking_uri"])
    assert client.get_run(result.mlflow_run_id).data.params["dataset.shots"] == "2"
    logged = client.download_artifacts(result.mlflow_run_id, "results.json", str(tmp_path))
    assert json.loads(Path(logged).read_text())["shot_samples"] == recorded
