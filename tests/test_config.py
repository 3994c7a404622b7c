"""Config validation: every mistake names its key and, where closed, the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from incad.config import load_config, validate_config
from incad.errors import ConfigError
from incad.resolve import load_run, resolve_raw

REPO_ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_quickstart_config_is_valid_and_splits_as_the_papers_write_it():
    config = load_config(REPO_ROOT / "experiments" / "quickstart.yaml")
    assert config.scenario.modality == "rgb+depth"
    assert config.scenario.step_classes(config.scenario.classes) == [["dome", "ring", "brick"], ["wave"], ["pebble"]]


def test_six_one_with_four_steps_groups_classes():
    raw = {"dataset": {"synthetic": {"num_classes": 10}}, "scenario": {"base": 6, "increment": 1, "steps": 4}, "learner": "reconstruction"}
    config = validate_config(raw)
    groups = config.scenario.step_classes([f"c{i}" for i in range(10)])
    assert groups == [["c0", "c1", "c2", "c3", "c4", "c5"], ["c6"], ["c7"], ["c8"], ["c9"]]
    assert config.scenario.num_classes == 10


def test_unknown_top_level_key_names_key_and_allowed_keys(tiny_run_config):
    tiny_run_config["trainig"] = {"epochs": 3}
    with pytest.raises(ConfigError) as error:
        validate_config(tiny_run_config, source="my.yaml")
    message = str(error.value)
    assert "my.yaml" in message and "trainig" in message
    assert "training" in message and "scenario" in message  # the allowed keys


def test_unknown_nested_key_is_named_with_its_section(tiny_run_config):
    tiny_run_config["training"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"training\.epoch"):
        validate_config(tiny_run_config)


def test_wrong_type_names_the_key(tiny_run_config):
    tiny_run_config["training"]["epochs"] = "ten"
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        validate_config(tiny_run_config)


def test_bad_modality_lists_allowed_values(tiny_run_config):
    tiny_run_config["scenario"]["modality"] = "rgbd"
    with pytest.raises(ConfigError) as error:
        validate_config(tiny_run_config)
    assert "scenario.modality" in str(error.value) and "rgb+depth" in str(error.value)


def test_unknown_learner_lists_registered_learners(tiny_run_config):
    tiny_run_config["learner"]["name"] = "recon"
    with pytest.raises(ConfigError) as error:
        resolve_raw(tiny_run_config)
    assert "learner.name" in str(error.value) and "reconstruction" in str(error.value)


def test_unknown_learner_option_is_named(tiny_run_config):
    tiny_run_config["learner"]["hiden_dim"] = 8
    with pytest.raises(ConfigError) as error:
        resolve_raw(tiny_run_config)
    assert "learner.hiden_dim" in str(error.value) and "hidden_dim" in str(error.value)


def test_unknown_strategy_lists_registered_strategies(tiny_run_config):
    tiny_run_config["strategy"] = "replai"
    with pytest.raises(ConfigError, match=r"strategy\.name.*naive"):
        resolve_raw(tiny_run_config)


def test_increment_without_steps_is_rejected(tiny_run_config):
    tiny_run_config["scenario"]["steps"] = 0
    with pytest.raises(ConfigError, match="scenario"):
        validate_config(tiny_run_config)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("scenario: {base: 3\nlearner: reconstruction\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_and_strategy_file(tmp_path, tiny_run_config):
    path = write(tmp_path, tiny_run_config)
    config = load_config(path, overrides=["training.epochs=7", "learner.hidden_dim=16"], strategy_file=REPO_ROOT / "strategies" / "naive.yaml")
    assert config.training.epochs == 7
    assert config.learner_options()["hidden_dim"] == 16
    assert config.strategy.name == "naive"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, overrides=["training.epochs"])


def test_the_schema_alone_leaves_options_to_the_registered_schema(tiny_run_config):
    """config.py is the schema only: a learner option is checked when the run is resolved, against the learner's own schema."""
    tiny_run_config["learner"]["hiden_dim"] = 8
    assert validate_config(tiny_run_config).learner_options() == {"hiden_dim": 8, **{k: v for k, v in tiny_run_config["learner"].items() if k != "name"}}
    with pytest.raises(ConfigError, match=r"learner\.hiden_dim"):
        resolve_raw(tiny_run_config)


def test_every_shipped_yaml_is_valid():
    for path in sorted((REPO_ROOT / "experiments").rglob("*.yaml")):
        load_run(path)
    for path in sorted((REPO_ROOT / "strategies").glob("*.yaml")):
        load_run(REPO_ROOT / "experiments" / "quickstart.yaml", strategy_file=path)
