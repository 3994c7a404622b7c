"""A shared tracking server: a real ``mlflow server`` (sqlite backend, proxied artifact root, free localhost port)
serves a run (per-step metrics, artifacts), a resumed run, the model registry with its aliases and ``incad predict``."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from incad.cli import main
from incad.config import validate_config
from incad.errors import OutputError
from incad.runner import run_experiment
from incad.tracking.anomaly_model import AnomalyDetector
from incad.tracking.model_registry import CHAMPION
from test_resume import CrashAtStep, SimulatedCrash
from tracking_server import free_port, mlflow_server


@pytest.fixture(scope="module")
def served(tiny_dataset, tmp_path_factory):
    """A run crashed before step 2 and resumed, all logged to and registered in a tracking server; the server stays up."""
    folder = tmp_path_factory.mktemp("server")
    with mlflow_server(folder / "server") as uri:
        raw = {
            "name": "served",
            "seed": 0,
            "output_dir": str(folder / "outputs"),
            "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
            "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb+depth"},
            "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
            "training": {"epochs": 1, "batch_size": 8},
            "evaluation": {"batch_size": 8},
            "tracking": {"tracking_uri": uri, "experiment": "served", "registry": {"enabled": True}},
        }
        config = validate_config(raw)
        with pytest.raises(SimulatedCrash):
            run_experiment(config, show_progress=False, extra_plugins=(CrashAtStep(2),))
        result = run_experiment(config, show_progress=False, resume=True)
        yield {"uri": uri, "folder": folder, "config": config, "result": result, "dataset": tiny_dataset}


def test_the_run_lives_on_the_server_with_one_metric_per_step(served):
    client = MlflowClient(tracking_uri=served["uri"])
    run = client.get_run(served["result"].mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server, not a local path"
    assert run.data.params["learner.name"] == "reconstruction"
    history = client.get_metric_history(run.info.run_id, "i_auroc/dome")
    assert [m.step for m in history] == [0, 1, 2]
    np.testing.assert_allclose([m.value for m in history], served["result"].matrices.values["i_auroc"][:, 0], atol=1e-6)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_seconds")] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"i_auroc_matrix.csv", "results.json"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "i_auroc_matrix.csv", str(served["folder"]))
    assert open(local).read() == (served["config"].output_dir / "served" / "i_auroc_matrix.csv").read_text()
    stored = list((served["folder"] / "server" / "artifacts").rglob("i_auroc_matrix.csv"))
    assert len(stored) == 1, "the server's artifact root holds the run's files"


def test_registry_versions_and_aliases_on_the_server(served):
    client = MlflowClient(tracking_uri=served["uri"], registry_uri=served["uri"])
    versions = sorted(client.search_model_versions("name = 'served'"), key=lambda version: int(version.version))
    assert [version.tags["step"] for version in versions] == ["0", "1", "2"]
    champion = client.get_model_version_by_alias("served", CHAMPION)
    assert champion.version == versions[-1].version, "without champion_margin the champion follows the newest version"
    assert champion.tags["learner"] == "reconstruction"


def test_predict_by_alias_from_the_server_scores_with_the_champions_weights(served, tmp_path, capsys):
    """``incad predict --model models:/served@champion`` against the server gives the scores of the champion step's checkpointed weights."""
    uri = served["uri"]
    images = served["dataset"] / "dome" / "test"
    assert main(["predict", "--tracking-uri", uri, "--model", f"models:/served@{CHAMPION}", str(images), "--out", str(tmp_path / "out"), "--overwrite"]) == 0
    predicted = json.loads((tmp_path / "out" / "scores.json").read_text())["images"]
    assert len(predicted) == 9

    step = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("served", CHAMPION).tags["step"]
    state = torch.load(served["config"].output_dir / "served" / "checkpoints" / f"step_{step}" / "state.pt", weights_only=True)
    learner = served["result"].learner
    learner.load_state_dict(state["learner"])
    detector = AnomalyDetector(served["config"], served["result"].scenario.class_order, learner)
    inputs = pd.DataFrame({"image": [row["image"] for row in predicted]})
    inputs["xyz"] = [path.replace("/rgb/", "/xyz/").removesuffix(".png") + ".tiff" for path in inputs["image"]]
    expected = detector.predict(inputs)["score"].to_numpy()
    np.testing.assert_allclose([row["score"] for row in predicted], expected, rtol=1e-5)


def test_a_server_that_does_not_answer_stops_the_run_before_any_data(tiny_run_config):
    uri = f"http://127.0.0.1:{free_port()}"
    config = validate_config({**tiny_run_config, "dataset": {"name": "mvtec3d", "root": "/nonexistent"}, "tracking": {"tracking_uri": uri}})
    with pytest.raises(OutputError, match=f"{uri}: the MLflow tracking server does not answer"):
        run_experiment(config, show_progress=False)
    assert mlflow.active_run() is None
