"""Model registry: a version per step with tags and aliases; ``incad predict`` by alias in a new process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from incad.config import validate_config
from incad.evaluation.results import METRICS
from incad.metrics import image_auroc
from incad.runner import run_experiment
from incad.tracking.model_registry import deserves_champion

MODEL = "tiny-registry"


@pytest.fixture(scope="module")
def registered(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    raw = {
        "name": "registry-run",
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2, "modality": "rgb+depth"},
        "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
        "training": {"epochs": 1, "batch_size": 8},
        "tracking": {"tracking_uri": uri, "experiment": "registry", "registry": {"enabled": True, "model_name": MODEL, "champion_margin": 0.02}},
    }
    result = run_experiment(validate_config(raw), show_progress=False)
    return {"result": result, "uri": uri, "folder": folder, "client": MlflowClient(tracking_uri=uri, registry_uri=uri)}


def test_a_version_per_step_with_tags(registered):
    client, matrices = registered["client"], registered["result"].matrices
    versions = sorted(client.search_model_versions(f"name='{MODEL}'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2", "3"]
    seen = ["dome,ring", "dome,ring,brick", "dome,ring,brick,wave"]
    for step, version in enumerate(versions):
        assert version.tags["step"] == str(step)
        assert version.tags["classes_seen"] == seen[step]
        assert version.tags["strategy"] == "naive" and version.tags["learner"] == "reconstruction"
        assert "2-1 with 2 steps" in version.tags["scenario"]
        for name in METRICS:
            assert float(version.tags[f"{name}_seen_mean"]) == pytest.approx(matrices.step_mean(name, step), abs=1e-6)
        assert version.run_id == registered["result"].mlflow_run_id


def test_aliases_follow_the_champion_rule(registered):
    client, matrices = registered["client"], registered["result"].matrices
    champion, best = 1, matrices.step_mean("i_auroc", 0)
    for step in (1, 2):
        candidate = matrices.step_mean("i_auroc", step)
        if candidate >= best - 0.02:
            champion, best = step + 1, candidate
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == str(champion)


def test_champion_margin_decides(registered):
    client = registered["client"]
    champion_value = float(client.get_model_version_by_alias(MODEL, "champion").tags["i_auroc_seen_mean"])
    assert deserves_champion(client, MODEL, champion_value - 0.01, margin=0.02)
    assert not deserves_champion(client, MODEL, champion_value - 0.03, margin=0.02)
    assert not deserves_champion(client, MODEL, math.nan, margin=0.02)
    assert deserves_champion(client, "no-such-model", 0.1, margin=0.0)


def test_logged_model_is_weights_and_config_not_a_pickle_or_code(registered):
    version = registered["client"].get_model_version(MODEL, "3")
    local = Path(mlflow.artifacts.download_artifacts(version.source, tracking_uri=registered["uri"], dst_path=str(registered["folder"] / "dl")))
    files = {path.name for path in local.rglob("*") if path.is_file()}
    assert {"weights.pt", "config.json", "classes.json", "manifest.json", "MLmodel"} <= files
    assert not any(name.endswith((".pkl", ".pickle", ".cloudpickle", ".py")) for name in files)


def test_predict_by_alias_in_a_new_process(registered, tiny_dataset, tmp_path):
    """``models:/<name>/latest`` (MLflow reserves the alias "latest") is the final model: its
    scores on dome's test images reproduce the run's final dome I-AUROC."""
    out = tmp_path / "predictions"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]}
    completed = subprocess.run(
        [sys.executable, "-m", "incad.cli", "predict", "--model", f"models:/{MODEL}/latest", str(tiny_dataset / "dome" / "test"), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "images scored" in completed.stdout
    records = json.loads((out / "scores.json").read_text())["images"]
    test_images = sorted((tiny_dataset / "dome" / "test").glob("*/rgb/*.png"))
    assert sorted(Path(r["image"]) for r in records) == test_images
    labels = np.array([0 if Path(r["image"]).parts[-3] == "good" else 1 for r in records])
    scores = np.array([r["score"] for r in records])
    final_dome = registered["result"].matrices.values["i_auroc"][2, 0]
    assert image_auroc(scores, labels) == pytest.approx(final_dome, abs=1e-6)
    assert (out / "scores.csv").read_text().splitlines()[0] == "image,score,overlay"
    assert all(Path(r["overlay"]).is_file() and Path(r["overlay"]).stat().st_size > 0 for r in records)


def test_predict_with_an_unknown_model_is_one_error_line(registered, tiny_dataset, capsys, tmp_path):
    from incad.cli import main

    code = main(["predict", "--model", "models:/no-such-model@champion", str(tiny_dataset / "dome" / "test"), "--tracking-uri", registered["uri"], "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model models:/no-such-model@champion") and "Traceback" not in err
