"""MLflow tracking of a run: params, step-level figures, final summary, matrices and plots.

One MLflow run per scenario (nested under an active parent run, or under a
parent given by id, e.g. of ``incad compare``). The per-class metrics (``<metric>/<class>``,
``<metric>/mean``, ``<metric>/fm`` at ``step`` = experience index) come from
the Avalanche metrics through :class:`incad.tracking.mlflow_logger.MlflowLogger`;
this module logs the rest. A resumed run reopens its MLflow run by id and
re-runs the steps after its checkpoint, some of which the run may already hold
(a kill during the checkpoint write, a corrupt last checkpoint): every metric
goes through :func:`log_metrics_once`, so each history keeps one value per
step, in step order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock
from mlflow.tracking import MlflowClient

from incad.config import RunConfig
from incad.evaluation.results import ResultMatrices

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: str | None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else a sqlite file in the working directory."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other stores and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def open_tracking_store(configured: str | None, experiment: str | None = None) -> str:
    """Point MLflow at the store (and ``experiment``); returns the URI.

    MLflow creates a sqlite store's tables on first use without a lock, so
    two processes starting at once on a fresh file fail (``table ... already
    exists``), and one of two creating the same experiment is left without an
    active experiment. Both happen here under a file lock next to the
    database, once per process (MLflow keeps the store it made).
    """
    uri = resolve_tracking_uri(configured)
    mlflow.set_tracking_uri(uri)
    database = sqlite_file(uri)
    if database is None:
        if experiment is not None:
            mlflow.set_experiment(experiment)
        return uri
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(database.with_name(database.name + ".lock")):
        client = MlflowClient()
        client.search_experiments(max_results=1)  # creates the tracking store's tables
        client.search_registered_models(max_results=1)  # and the registry store's
        if experiment is not None:
            mlflow.set_experiment(experiment)
    return uri


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


# (metric, step) pairs each MLflow run holds, read from the store when this process first logs into the run.
_held_by_run: dict[str, set[tuple[str, int]]] = {}


def log_metrics_once(values: dict[str, float], step: int) -> None:
    """Log ``values`` at ``step`` to the active MLflow run, leaving out each metric the run already holds at that step.

    Deterministic re-runs of a step give the same values, so the first stays.
    """
    run = mlflow.active_run()
    if run is None:
        return
    run_id = run.info.run_id
    held = _held_by_run.get(run_id)
    if held is None:
        client = MlflowClient()
        held = _held_by_run[run_id] = {(key, m.step) for key in client.get_run(run_id).data.metrics for m in client.get_metric_history(run_id, key)}
    new = {key: value for key, value in values.items() if (key, step) not in held}
    if new:
        mlflow.log_metrics(new, step=step)
        held.update((key, step) for key in new)


class MlflowTracker:
    """Context manager around one MLflow run; every method is a no-op when tracking is disabled."""

    def __init__(self, config: RunConfig, resume_run_id: str | None = None, parent_run_id: str | None = None) -> None:
        self.config = config
        self.enabled = config.tracking.enabled
        self.run_id: str | None = resume_run_id
        self.parent_run_id = parent_run_id

    def __enter__(self) -> "MlflowTracker":
        if self.enabled:
            tracking = self.config.tracking
            nested = mlflow.active_run() is not None
            if self.run_id is not None:
                open_tracking_store(tracking.tracking_uri)
                mlflow.start_run(run_id=self.run_id, nested=nested)
                return self
            open_tracking_store(tracking.tracking_uri, tracking.experiment)
            # A parent given by id (``incad compare`` on Ray: the parent run lives in another process) makes this a nested run too.
            run = mlflow.start_run(run_name=self.config.tracking.run_name or self.config.name, nested=nested, parent_run_id=self.parent_run_id)
            self.run_id = run.info.run_id
            mlflow.log_params(flatten(self.config.model_dump(mode="json")))
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.enabled:
            mlflow.end_run(status="FAILED" if exc_type else "FINISHED")

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Step-level figures that are not Avalanche metrics (training time, last loss terms)."""
        if self.enabled:
            log_metrics_once({k: v for k, v in values.items() if v == v}, step)

    def log_final(self, matrices: ResultMatrices, summary: dict[str, float], artifacts: list[Path]) -> None:
        """Final means, FM and the files (matrix CSVs, plots) of the run."""
        if not self.enabled:
            return
        log_metrics_once({k: v for k, v in summary.items() if v == v}, matrices.num_steps - 1)
        for path in artifacts:
            mlflow.log_artifact(str(path))
