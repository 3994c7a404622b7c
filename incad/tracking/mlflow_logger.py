"""An Avalanche logger that writes metric values to the active MLflow run.

Avalanche 0.6.0 ships loggers for text, CSV, TensorBoard and W&B, none for
MLflow. Every scalar a ``PluginMetric`` emits becomes an MLflow metric under
the same name, at ``step`` = the metric's ``x_plot`` (the training step for
incad's metrics), so the MLflow UI plots each class over the steps.
Values go through :func:`incad.tracking.mlflow_tracker.log_metrics_once`, so
a step re-run after a resume is not logged twice.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict

from avalanche.evaluation.metric_results import MetricValue
from avalanche.logging import BaseLogger

from incad.tracking.mlflow_tracker import log_metrics_once


class MlflowLogger(BaseLogger):
    """Logs finite scalar metric values to ``mlflow.active_run()`` once per step; other value types (images, tensors) are skipped."""

    def log_metrics(self, metric_values: list[MetricValue]) -> None:
        """One MLflow batch per step instead of one database write per value."""
        per_step: dict[int, dict[str, float]] = defaultdict(dict)
        for metric_value in metric_values:
            value = metric_value.value
            if isinstance(value, numbers.Real) and math.isfinite(value):
                per_step[int(metric_value.x_plot)][metric_value.name] = float(value)
        for step, values in per_step.items():
            log_metrics_once(values, step)
