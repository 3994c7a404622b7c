"""Checkpoints under faults: damaged step folders are skipped on --resume, a failed write cleans up,
a kill during the checkpoint write logs no metric twice, and a copied output folder resumes.

One uninterrupted 3-step run is built once; each damage case restores its
pristine checkpoints, damages them, resumes in place and must end with the
uninterrupted run's matrices.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from incad.checkpoint import save_checkpoint
from incad.config import validate_config
from incad.errors import ConfigError, OutputError
from incad.evaluation.results import METRICS, ResultMatrices
from incad.runner import run_experiment


class SimulatedKill(RuntimeError):
    """Stands for a kill -9 in the middle of a checkpoint write."""


def raw_config(dataset: Path, folder: Path) -> dict:
    return {
        "name": "faults",
        "seed": 2,
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb+depth"},
        "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
        "training": {"epochs": 2, "batch_size": 4},
        "evaluation": {"batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "faults"},
    }


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    """The reference run and a pristine copy of its three step checkpoints."""
    folder = tmp_path_factory.mktemp("faults")
    config = validate_config(raw_config(tiny_dataset, folder))
    result = run_experiment(config, show_progress=False)
    checkpoints = result.output_dir / "checkpoints"
    pristine = Path(shutil.copytree(checkpoints, folder / "pristine"))
    return SimpleNamespace(config=config, result=result, checkpoints=checkpoints, pristine=pristine, folder=folder)


def assert_same_matrices(result, reference) -> None:
    for name in METRICS:
        assert np.isfinite(reference.matrices.values[name][-1]).all()
        np.testing.assert_allclose(result.matrices.values[name], reference.matrices.values[name], atol=1e-6, equal_nan=True, err_msg=name)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_learner_shape(path: Path) -> None:
    """A state.pt that loads but whose first learner tensor has another shape: refused before anything is restored."""
    state = torch.load(path, weights_only=True)
    key = next(iter(state["learner"]))
    state["learner"][key] = torch.zeros(*state["learner"][key].shape[:-1], state["learner"][key].shape[-1] + 1)
    torch.save(state, path)


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "state-truncated": ("state.pt", truncate, "state.pt is truncated, corrupt"),
    "state-empty": ("state.pt", lambda path: path.write_bytes(b""), "state.pt is empty"),
    "state-random": ("state.pt", lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)), "state.pt is truncated, corrupt"),
    "state-missing": ("state.pt", Path.unlink, "state.pt is missing"),
    "state-wrong-shape": ("state.pt", wrong_learner_shape, "learner tensors of another shape"),
    "meta-truncated": ("meta.json", truncate, "meta.json is not valid JSON"),
    "meta-missing": ("meta.json", Path.unlink, "meta.json is missing"),
}


def restore_pristine(uninterrupted) -> Path:
    shutil.rmtree(uninterrupted.checkpoints)
    return Path(shutil.copytree(uninterrupted.pristine, uninterrupted.checkpoints))


def skip_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "--resume: skipping" in record.getMessage()]


@pytest.mark.parametrize("case", DAMAGE)
def test_resume_skips_a_damaged_last_checkpoint(uninterrupted, case, caplog):
    file_name, damage, reason = DAMAGE[case]
    checkpoints = restore_pristine(uninterrupted)
    damage(checkpoints / "step_2" / file_name)
    with caplog.at_level(logging.WARNING, logger="incad"):
        resumed = run_experiment(uninterrupted.config, show_progress=False, resume=True)
    (line,) = skip_lines(caplog)
    assert str(checkpoints / "step_2") in line and reason in line and "\n" not in line
    assert resumed.step_seconds[:2] == uninterrupted.result.step_seconds[:2], "steps 0 and 1 came from step_1's checkpoint"
    assert_same_matrices(resumed, uninterrupted.result)
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step_0", "step_1", "step_2"]


def test_resume_skips_several_damaged_checkpoints(uninterrupted, caplog):
    checkpoints = restore_pristine(uninterrupted)
    (checkpoints / "step_2" / "state.pt").write_bytes(b"")
    (checkpoints / "step_1" / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="incad"):
        resumed = run_experiment(uninterrupted.config, show_progress=False, resume=True)
    assert [line.split(": ", 2)[1] for line in skip_lines(caplog)] == [f"skipping the checkpoint {checkpoints / 'step_2'}", f"skipping the checkpoint {checkpoints / 'step_1'}"]
    assert resumed.step_seconds[0] == uninterrupted.result.step_seconds[0] and resumed.step_seconds[1] != uninterrupted.result.step_seconds[1]
    assert_same_matrices(resumed, uninterrupted.result)


def test_resume_with_no_usable_checkpoint_says_so_in_one_line(uninterrupted):
    checkpoints = restore_pristine(uninterrupted)
    for step in range(3):
        (checkpoints / f"step_{step}" / "state.pt").write_bytes(b"")
    with pytest.raises(ConfigError) as error:
        run_experiment(uninterrupted.config, show_progress=False, resume=True)
    message = str(error.value)
    assert "\n" not in message and f"no checkpoint in {checkpoints} can be restored" in message
    assert "step_2: state.pt is empty; step_1: state.pt is empty; step_0: state.pt is empty" in message
    assert "run without --resume" in message


def test_resume_of_a_copied_output_folder(uninterrupted):
    """A run folder (checkpoints and manifest) copied elsewhere, as a stopped run moved to another disk, resumes from there."""
    moved = uninterrupted.folder / "moved"
    shutil.copytree(uninterrupted.pristine, moved / "faults" / "checkpoints", ignore=lambda folder, names: ["step_2"] if "step_2" in names else [])
    shutil.copy(uninterrupted.result.output_dir / "run_manifest.json", moved / "faults")
    config = validate_config({**raw_config(uninterrupted.config.dataset.root, uninterrupted.folder), "output_dir": str(moved)})
    resumed = run_experiment(config, show_progress=False, resume=True)
    assert resumed.output_dir == moved / "faults" and (moved / "faults" / "checkpoints" / "step_2").is_dir()
    assert_same_matrices(resumed, uninterrupted.result)


def test_a_kill_during_the_checkpoint_write_logs_each_step_once(uninterrupted, monkeypatch):
    """Killed after step 1's state.pt was written: the resumed run re-runs step 1 and its MLflow run holds one value per metric and step."""
    config = validate_config({**raw_config(uninterrupted.config.dataset.root, uninterrupted.folder), "name": "killed"})
    real_save = torch.save

    def killed_after_state(state, file, *args, **kwargs):
        real_save(state, file, *args, **kwargs)
        if "step_1.partial" in str(file.name if hasattr(file, "write") else file):
            raise SimulatedKill("killed while writing step_1")

    monkeypatch.setattr(torch, "save", killed_after_state)
    with pytest.raises(SimulatedKill):
        run_experiment(config, show_progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    resumed = run_experiment(config, show_progress=False, resume=True)
    assert_same_matrices(resumed, uninterrupted.result)
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    keys = client.get_run(resumed.mlflow_run_id).data.metrics
    assert {"train_seconds", "i_auroc/dome", "i_auroc/mean", "i_auroc/fm", "i_auroc/final_mean"} <= set(keys)
    for key in keys:
        steps = [metric.step for metric in client.get_metric_history(resumed.mlflow_run_id, key)]
        assert steps == sorted(set(steps)), f"{key} logged at steps {steps}"
    assert [m.step for m in client.get_metric_history(resumed.mlflow_run_id, "i_auroc/dome")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(resumed.mlflow_run_id, "train_seconds")] == [0, 1, 2]


def tiny_strategy() -> SimpleNamespace:
    model = torch.nn.Linear(4, 2)
    return SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), plugins=[], clock=SimpleNamespace(train_exp_counter=1))


def test_a_full_disk_during_the_checkpoint_write_removes_the_partial_folder(tmp_path, monkeypatch):
    """torch.save writes into /dev/full, a device that is always full: the real ENOSPC error of a full disk."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    real_save = torch.save

    def save_to_full_disk(state, file, *args, **kwargs):
        with open("/dev/full", "wb") as full:
            real_save(state, full, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    with pytest.raises(OutputError) as error:
        save_checkpoint(tmp_path / "checkpoints", 0, tiny_strategy(), ResultMatrices(["a"], 1), {}, None, [1.0])
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'checkpoints' / 'step_0'}: ")
    assert "no space left on device" in message and "step_0.partial was removed" in message
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_another_write_error_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    def failing_write(self, *args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(self))

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(OutputError) as error:
        save_checkpoint(tmp_path / "checkpoints", 3, tiny_strategy(), ResultMatrices(["a"], 1), {}, None, [1.0])
    assert str(error.value).startswith(f"{tmp_path / 'checkpoints' / 'step_3'}: cannot write the checkpoint of step 3: input/output error")
    assert list((tmp_path / "checkpoints").iterdir()) == []
