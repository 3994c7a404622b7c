"""A whole tiny run: matrices filled step by step, everything in MLflow, outputs on disk."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from incad.config import validate_config
from incad.errors import DataError
from incad.evaluation.results import METRICS
from incad.runner import run_experiment


@pytest.fixture(scope="module")
def tiny_result(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    raw = {
        "name": "tiny",
        "output_dir": str(folder / "outputs"),
        "dataset": {"name": "mvtec3d", "root": str(tiny_dataset), "image_size": 64},
        "scenario": {"classes": ["dome", "ring", "brick", "wave"], "base": 2, "increment": 1, "steps": 2},
        "learner": {"name": "reconstruction", "hidden_dim": 32, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 64},
        "training": {"epochs": 2, "batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "tests"},
    }
    return run_experiment(validate_config(raw), show_progress=False)


def test_matrices_are_filled_only_for_classes_seen_so_far(tiny_result):
    expected_seen = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    for name in METRICS:
        matrix = tiny_result.matrices.values[name]
        assert matrix.shape == (3, 4)
        assert np.array_equal(np.isfinite(matrix), expected_seen), name
    # The learner localises the synthetic defects at every step (P-AUROC measured 0.851-0.913 per class and step, seeds 0-2).
    pixel_auroc = tiny_result.matrices.values["p_auroc"][expected_seen]
    assert (pixel_auroc > 0.8).all(), pixel_auroc
    for name in METRICS:  # FM (IB-IUMAD eq. 1): mean over dome, ring, brick of best earlier value minus final value
        matrix = tiny_result.matrices.values[name]
        drops = np.nanmax(matrix[:-1, :3], axis=0) - matrix[-1, :3]
        assert tiny_result.summary[f"{name}/fm"] == pytest.approx(drops.mean()), name


def test_mlflow_holds_params_step_metrics_and_artifacts(tiny_result):
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    run = client.get_run(tiny_result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["scenario.base"] == "2"
    assert run.data.params["learner.name"] == "reconstruction"
    history = client.get_metric_history(run.info.run_id, "i_auroc/dome")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "i_auroc/wave")] == [2]
    logged_mean = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "p_auroc/mean")}
    assert logged_mean[2] == pytest.approx(tiny_result.matrices.final_mean("p_auroc"))
    assert run.data.metrics["i_auroc/fm"] == pytest.approx(tiny_result.summary["i_auroc/fm"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"i_auroc_matrix.csv", "aupro_1_matrix.csv", "metrics_per_class.png", "results.json"} <= artifacts


def test_matrix_csv_matches_the_matrix(tiny_result):
    lines = (tiny_result.output_dir / "p_auroc_matrix.csv").read_text().splitlines()
    assert lines[0] == "step,dome,ring,brick,wave"
    last = [float(v) for v in lines[3].split(",")[1:]]
    assert np.allclose(last, tiny_result.matrices.values["p_auroc"][2], atol=1e-6)


def test_missing_data_folder_is_named(tmp_path):
    raw = {"dataset": {"name": "mvtec3d", "root": str(tmp_path / "nowhere")}, "scenario": {"base": 1}, "learner": "reconstruction", "tracking": {"enabled": False}}
    with pytest.raises(DataError, match="nowhere"):
        run_experiment(validate_config(raw), show_progress=False)
