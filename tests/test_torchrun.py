"""Data-parallel runs with the real ``torchrun`` (gloo, 2 processes) against one process, and a killed + resumed torchrun run.

Tolerance against one process: every weight within 1e-6 except the attention
key biases. The two runs see the same global batches (``training.shuffle:
false``, no jitter, no dropout) but sum the gradients in another order (two
half batches averaged by DDP's all-reduce); a key bias has an exactly zero
gradient (softmax ignores a constant added to every key), so what reaches it
is rounding noise, which AdamW scales up to steps of about ``lr``; it changes
no output. The matrices, from rank 0's evaluation, agree within 1e-5.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from incad.config import validate_config
from incad.evaluation.results import METRICS
from incad.runner import run_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_SECONDS = 600


def torchrun(scenario: Path, name: str, *extra: str) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m incad run <scenario>`` in its own process group."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "-m", "incad", "run", str(scenario)]
    return subprocess.Popen([*command, "--set", f"name={name}", "--no-progress", *extra], env=env, start_new_session=True)


def finish(process: subprocess.Popen) -> None:
    assert process.wait(timeout=TORCHRUN_SECONDS) == 0


def final_state(outputs: Path, name: str) -> dict:
    return torch.load(outputs / name / "checkpoints" / "step_2" / "state.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    raw = {
        "name": "single",
        "seed": 0,
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb"},
        "learner": {
            "name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64,
            "dropout": 0.0, "jitter_prob": 0.0,
        },
        "training": {"epochs": 1, "batch_size": 4, "shuffle": False},
        "evaluation": {"batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "torchrun", "registry": {"enabled": True}},
    }  # fmt: skip
    scenario = folder / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(raw))
    single = run_experiment(validate_config(raw), show_progress=False)
    finish(torchrun(scenario, "ddp"))
    killed = torchrun(scenario, "killed")
    step_1 = folder / "outputs" / "killed" / "checkpoints" / "step_1" / "meta.json"
    deadline = time.monotonic() + TORCHRUN_SECONDS
    while not step_1.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(killed.pid, signal.SIGKILL)  # torchrun and both ranks, as a lost machine would
    killed.wait()
    checkpoints_at_kill = sorted(path.name for path in step_1.parent.parent.iterdir())
    finish(torchrun(scenario, "killed", "--resume"))
    return {"folder": folder, "single": single, "checkpoints_at_kill": checkpoints_at_kill}


def test_two_processes_reach_the_single_process_state_and_matrices(runs):
    ddp = final_state(runs["folder"] / "outputs", "ddp")
    single = runs["single"].learner.state_dict()
    assert ddp["learner"].keys() == single.keys()
    for key, expected in single.items():
        got = ddp["learner"][key]
        if key.endswith("in_proj_bias"):  # the key third has a zero gradient (see the module docstring)
            hidden = expected.numel() // 3
            got, expected = torch.cat([got[:hidden], got[2 * hidden :]]), torch.cat([expected[:hidden], expected[2 * hidden :]])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, msg=key)
    for name in METRICS:
        np.testing.assert_allclose(ddp["matrices"][name].numpy(), runs["single"].matrices.values[name], atol=1e-5, equal_nan=True, err_msg=name)
        assert np.isfinite(ddp["matrices"][name].numpy()[2, :4]).all()


def test_killed_and_resumed_equals_uninterrupted(runs):
    assert "step_1" in runs["checkpoints_at_kill"] and "step_2" not in runs["checkpoints_at_kill"]
    outputs = runs["folder"] / "outputs"
    uninterrupted, resumed = final_state(outputs, "ddp"), final_state(outputs, "killed")
    for key, expected in uninterrupted["learner"].items():
        torch.testing.assert_close(resumed["learner"][key], expected, atol=1e-6, rtol=0, msg=key)
    for name in METRICS:
        np.testing.assert_allclose(resumed["matrices"][name].numpy(), uninterrupted["matrices"][name].numpy(), atol=1e-6, equal_nan=True, err_msg=name)


def test_rank_0_alone_logs_and_registers(runs):
    client = MlflowClient(tracking_uri=f"sqlite:///{runs['folder'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("torchrun")
    names = sorted(run.info.run_name for run in client.search_runs([experiment.experiment_id]))
    assert names == ["ddp", "killed", "single"], "one MLflow run per torchrun run, the resumed one continued"
    for name in ("ddp", "killed"):
        (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'")
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "i_auroc/dome")] == [0, 1, 2]
    versions = client.search_model_versions("name = 'ddp'")
    assert sorted(version.tags["step"] for version in versions) == ["0", "1", "2"]
    assert mlflow.active_run() is None
