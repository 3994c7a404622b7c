"""The step x object metrics and FM as Avalanche PluginMetrics, and the MLflow logger they reach."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from avalanche.evaluation.metric_results import MetricValue
from mlflow.tracking import MlflowClient

from incad.config import validate_config
from incad.evaluation.avalanche_metrics import ForgettingMeasureMetric
from incad.evaluation.results import METRICS, ResultMatrices
from incad.metrics import forgetting_measure
from incad.runner import run_experiment
from incad.tracking.mlflow_logger import MlflowLogger


def filled_matrices() -> ResultMatrices:
    """3 steps, 3 objects; object 0 peaks at step 1, object 1 improves, object 2 arrives last."""
    matrices = ResultMatrices(["a", "b", "c"], 3)
    rows = {"i_auroc": [[0.9, np.nan, np.nan], [0.95, 0.6, np.nan], [0.7, 0.8, 0.9]]}
    for name in METRICS:
        matrices.values[name] = np.array(rows.get("i_auroc"), dtype=float) * (1.0 if name == "i_auroc" else 0.9)
    return matrices


def test_forgetting_metric_agrees_with_forgetting_measure_at_every_step():
    matrices = filled_matrices()
    metric = ForgettingMeasureMetric(matrices)
    emitted = {}
    for completed in (1, 2, 3):
        values = metric.after_eval(SimpleNamespace(clock=SimpleNamespace(train_exp_counter=completed)))
        emitted[completed - 1] = {value.name: (value.value, value.x_plot) for value in values}
    assert emitted[0] == {}, "FM is undefined after the first step and is not emitted"
    assert emitted[1]["i_auroc/fm"] == (pytest.approx(0.9 - 0.95), 1)
    # object a: best 0.95 -> 0.7 (0.25); object b: 0.6 -> 0.8 (-0.2): mean 0.025
    assert emitted[2]["i_auroc/fm"][0] == pytest.approx(0.025)
    for step in (1, 2):
        for name in METRICS:
            assert emitted[step][f"{name}/fm"][0] == pytest.approx(forgetting_measure(matrices.values[name][: step + 1]))


def test_mlflow_logger_writes_finite_scalars_at_their_step(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("logger")
    logger = MlflowLogger()
    with mlflow.start_run() as run:
        logger.log_metrics(
            [
                MetricValue(None, "i_auroc/a", 0.5, 0),
                MetricValue(None, "i_auroc/a", 0.75, 1),
                MetricValue(None, "i_auroc/mean", float("nan"), 1),
                MetricValue(None, "an_image", "not a number", 1),
            ]
        )
    client = MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "i_auroc/a")] == [(0, 0.5), (1, 0.75)]
    assert set(client.get_run(run.info.run_id).data.metrics) == {"i_auroc/a"}


def test_a_run_logs_the_plugin_metrics_with_steps(tiny_run_config):
    result = run_experiment(validate_config(tiny_run_config), show_progress=False)
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    run_id = result.mlflow_run_id
    for name in METRICS:
        fm_history = {m.step: m.value for m in client.get_metric_history(run_id, f"{name}/fm")}
        for step, value in fm_history.items():
            assert value == pytest.approx(forgetting_measure(result.matrices.values[name][: step + 1]))
        assert fm_history[2] == pytest.approx(result.summary[f"{name}/fm"])
        means = {m.step: m.value for m in client.get_metric_history(run_id, f"{name}/mean")}
        assert means == pytest.approx({step: result.matrices.step_mean(name, step) for step in range(3)})
    brick = client.get_metric_history(run_id, "p_auroc/brick")
    assert [(m.step, m.value) for m in brick] == [(1, pytest.approx(result.matrices.values["p_auroc"][1, 2])), (2, pytest.approx(result.matrices.values["p_auroc"][2, 2]))]
