"""MLflow tracking of a run: params, per-step per-class metrics, matrices and plots.

One MLflow run per scenario. Metric keys are ``<metric>/<class>`` and
``<metric>/mean`` with ``step`` = experience index, so the MLflow UI plots each
class over the steps; final means and FM are logged at the end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow

from incad.config import RunConfig
from incad.evaluation.results import METRICS, ResultMatrices

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: str | None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a sqlite file in the working directory."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


class MlflowTracker:
    """Context manager around one MLflow run; every method is a no-op when tracking is disabled."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.enabled = config.tracking.enabled
        self.run_id: str | None = None

    def __enter__(self) -> "MlflowTracker":
        if self.enabled:
            mlflow.set_tracking_uri(resolve_tracking_uri(self.config.tracking.tracking_uri))
            mlflow.set_experiment(self.config.tracking.experiment)
            run = mlflow.start_run(run_name=self.config.tracking.run_name or self.config.name)
            self.run_id = run.info.run_id
            mlflow.log_params(flatten(self.config.model_dump(mode="json")))
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.enabled:
            mlflow.end_run(status="FAILED" if exc_type else "FINISHED")

    def log_step(self, step: int, matrices: ResultMatrices, extra: dict[str, float]) -> None:
        """Per-class and mean metrics of ``step``, plus step-level figures such as train time."""
        if not self.enabled:
            return
        values: dict[str, float] = dict(extra)
        for name in METRICS:
            row = matrices.values[name][step]
            for object_id, class_name in enumerate(matrices.class_names):
                if row[object_id] == row[object_id]:  # not NaN: evaluated at this step
                    values[f"{name}/{class_name}"] = float(row[object_id])
            values[f"{name}/mean"] = matrices.step_mean(name, step)
        mlflow.log_metrics({k: v for k, v in values.items() if v == v}, step=step)

    def log_final(self, matrices: ResultMatrices, summary: dict[str, float], artifacts: list[Path]) -> None:
        """Final means, FM and the files (matrix CSVs, plots) of the run."""
        if not self.enabled:
            return
        mlflow.log_metrics({k: v for k, v in summary.items() if v == v})
        for path in artifacts:
            mlflow.log_artifact(str(path))
