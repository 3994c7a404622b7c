"""Kill-and-resume: a run stopped after step 1 of 3 and resumed ends with the matrices of an uninterrupted run."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from mlflow.tracking import MlflowClient

from incad.checkpoint import latest_checkpoint
from incad.config import validate_config
from incad.errors import ConfigError
from incad.evaluation.results import METRICS
from incad.runner import run_experiment


class SimulatedCrash(RuntimeError):
    """Stands for a kill: raised when training of a given step starts."""


class CrashAtStep(SupervisedPlugin):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def before_training_exp(self, strategy, **kwargs) -> None:
        if strategy.experience.current_experience == self.step:
            raise SimulatedCrash(f"killed before step {self.step}")


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """An uninterrupted run and a run crashed before step 2, then resumed; same seed."""
    folder = tmp_path_factory.mktemp("resume")
    raw = {
        "seed": 1,
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb+depth"},
        "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
        "training": {"epochs": 2, "batch_size": 4},
        "evaluation": {"batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "resume"},
    }
    uninterrupted = run_experiment(validate_config({**raw, "name": "uninterrupted"}), show_progress=False)
    interrupted_config = validate_config({**raw, "name": "interrupted"})
    with pytest.raises(SimulatedCrash):
        run_experiment(interrupted_config, show_progress=False, extra_plugins=(CrashAtStep(2),))
    checkpoints = interrupted_config.output_dir / "interrupted" / "checkpoints"
    last_before_resume = latest_checkpoint(checkpoints)
    resumed = run_experiment(interrupted_config, show_progress=False, resume=True)
    return {"raw": raw, "uninterrupted": uninterrupted, "resumed": resumed, "last_before_resume": last_before_resume, "checkpoints": checkpoints}


def test_resume_starts_after_the_last_completed_step(runs):
    assert runs["last_before_resume"].name == "step_1"
    assert sorted(path.name for path in runs["checkpoints"].iterdir()) == ["step_0", "step_1", "step_2"]
    meta = json.loads((runs["last_before_resume"] / "meta.json").read_text())
    assert meta["step"] == 1 and len(meta["step_seconds"]) == 2


def test_resumed_matrices_equal_the_uninterrupted_run(runs):
    for name in METRICS:
        expected = runs["uninterrupted"].matrices.values[name]
        assert np.isfinite(expected[2]).all()
        np.testing.assert_allclose(runs["resumed"].matrices.values[name], expected, atol=1e-6, equal_nan=True, err_msg=name)
    for key, value in runs["uninterrupted"].summary.items():
        assert runs["resumed"].summary[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_resumed_weights_equal_the_uninterrupted_run(runs):
    expected = runs["uninterrupted"].learner.state_dict()
    resumed = runs["resumed"].learner.state_dict()
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], atol=1e-6, rtol=0, msg=key)


def test_checkpoint_holds_tensors_only_and_loads_safely(runs):
    state = torch.load(runs["last_before_resume"] / "state.pt", weights_only=True)
    assert {"learner", "optimizer", "plugins", "matrices", "rng"} <= set(state)
    assert state["optimizer"]["state"], "the optimizer's moments are saved"
    np.testing.assert_allclose(state["matrices"]["i_auroc"].numpy()[:2], runs["uninterrupted"].matrices.values["i_auroc"][:2], atol=1e-6)
    assert np.isnan(state["matrices"]["i_auroc"].numpy()[2]).all()


def test_resume_continues_the_same_mlflow_run(runs):
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    run = client.get_run(runs["resumed"].mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert json.loads((runs["last_before_resume"] / "meta.json").read_text())["mlflow_run_id"] == run.info.run_id
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "i_auroc/dome")) == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_seconds")] == [0, 1, 2]


def test_resume_restores_a_stateful_strategy_plugin(runs):
    """Replay's buffer (a StatefulPlugin) survives the kill: the resumed run replays the same samples."""
    raw = {**runs["raw"], "strategy": {"name": "replay", "buffer_size": 6}, "training": {"epochs": 1, "batch_size": 4}}
    uninterrupted = run_experiment(validate_config({**raw, "name": "replay-uninterrupted"}), show_progress=False)
    config = validate_config({**raw, "name": "replay-interrupted"})
    with pytest.raises(SimulatedCrash):
        run_experiment(config, show_progress=False, extra_plugins=(CrashAtStep(2),))
    saved = torch.load(config.output_dir / "replay-interrupted" / "checkpoints" / "step_1" / "state.pt", weights_only=True)
    (buffer_state,) = saved["plugins"].values()
    assert sorted(step for step, _ in buffer_state["groups"].values()) == [0, 1], "the buffer holds samples of both earlier steps"
    resumed = run_experiment(config, show_progress=False, resume=True)
    for name in METRICS:
        np.testing.assert_allclose(resumed.matrices.values[name], uninterrupted.matrices.values[name], atol=1e-6, equal_nan=True, err_msg=name)


def test_resume_refuses_a_different_config(runs):
    changed = validate_config({**runs["raw"], "name": "interrupted", "training": {"epochs": 3, "batch_size": 4}})
    with pytest.raises(ConfigError, match="training"):
        run_experiment(changed, show_progress=False, resume=True)


def test_resume_refuses_a_checkpoint_of_another_class_order(runs, tmp_path):
    """The learner was built from the class order in meta.json (Learner.class_names); another order would rebuild another learner."""
    copy = tmp_path / "outputs"
    shutil.copytree(runs["checkpoints"].parent, copy / "interrupted")
    for meta_file in (copy / "interrupted" / "checkpoints").glob("step_*/meta.json"):
        meta = json.loads(meta_file.read_text())
        assert meta["class_order"] == ["dome", "ring", "brick", "wave"]
        meta["class_order"] = ["ring", "dome", "brick", "wave"]
        meta_file.write_text(json.dumps(meta))
    moved = validate_config({**runs["raw"], "name": "interrupted", "output_dir": str(copy)})
    with pytest.raises(ConfigError, match="class order"):
        run_experiment(moved, show_progress=False, resume=True)


def test_resume_without_checkpoint_says_so(runs):
    fresh = validate_config({**runs["raw"], "name": "never-ran"})
    with pytest.raises(ConfigError, match="no completed step checkpoint"):
        run_experiment(fresh, show_progress=False, resume=True)


def test_cli_run_has_resume():
    from incad.cli import build_parser

    assert build_parser().parse_args(["run", "scenario.yaml", "--resume"]).resume is True
    assert build_parser().parse_args(["run", "scenario.yaml"]).resume is False
