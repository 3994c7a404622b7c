"""The step x object metrics and the forgetting measure as Avalanche ``PluginMetric``s.

:class:`AnomalyDetectionMetrics` collects anomaly maps, masks and labels per
object during ``strategy.eval``, computes every metric of each object, records
them in the run's :class:`ResultMatrices` (the single source of the numbers)
and emits them as Avalanche metric values (``<metric>/<class>``,
``<metric>/mean``) with ``x_plot`` = the last completed training step.

:class:`ForgettingMeasureMetric` emits ``<metric>/fm`` after every evaluation
from the same matrices. Avalanche's ``GenericExperienceForgetting`` measures
"value when first learned minus current value"; IB-IUMAD's eq. 1 (and
``incad.metrics.forgetting_measure``) takes the *best* earlier value, so the
forgetting here is its own metric that reads the matrices.

Both reach any Avalanche logger (``incad.tracking.mlflow_logger.MlflowLogger``
for MLflow) through the strategy's ``EvaluationPlugin``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from incad.evaluation.postprocess import image_scores, upsample_and_smooth
from incad.evaluation.results import METRICS, ResultMatrices, evaluate_object


def completed_steps(strategy) -> int:
    """Training steps finished so far: the row of the matrices an evaluation fills."""
    return strategy.clock.train_exp_counter


class AnomalyDetectionMetrics(PluginMetric[dict]):
    """Every metric of every evaluated object, after each evaluation of the seen classes."""

    def __init__(self, matrices: ResultMatrices, smoothing_sigma: float) -> None:
        super().__init__()
        self.matrices = matrices
        self.smoothing_sigma = smoothing_sigma
        self._collected: dict[int, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
        self._step: int | None = None

    def reset(self) -> None:
        self._collected = defaultdict(lambda: defaultdict(list))

    def result(self) -> dict[str, float]:
        """The metric values of the last evaluated step, keyed as they are logged."""
        if self._step is None:
            return {}
        values: dict[str, float] = {}
        for name in METRICS:
            row = self.matrices.values[name][self._step]
            for object_id, class_name in enumerate(self.matrices.class_names):
                if np.isfinite(row[object_id]):
                    values[f"{name}/{class_name}"] = float(row[object_id])
            mean = self.matrices.step_mean(name, self._step)
            if np.isfinite(mean):
                values[f"{name}/mean"] = mean
        return values

    def before_eval(self, strategy) -> None:
        self.reset()

    @torch.no_grad()
    def after_eval_iteration(self, strategy) -> None:
        batch = strategy.mbatch
        maps = upsample_and_smooth(strategy.mb_output, tuple(batch.mask.shape[-2:]), self.smoothing_sigma)
        scores = image_scores(maps)
        for object_id in batch.object_id.unique().tolist():
            rows = batch.object_id == object_id
            store = self._collected[object_id]
            store["maps"].append(maps[rows].cpu().numpy().astype(np.float32))
            store["masks"].append(batch.mask[rows].cpu().numpy() > 0.5)
            store["scores"].append(scores[rows].cpu().numpy())
            store["labels"].append(batch.label[rows].cpu().numpy())

    def after_eval(self, strategy) -> list[MetricValue]:
        step = completed_steps(strategy) - 1
        if step < 0:
            raise RuntimeError("evaluation before any training step: the result matrices are indexed by step")
        for object_id, store in sorted(self._collected.items()):
            joined = {key: np.concatenate(parts) for key, parts in store.items()}
            self.matrices.record(step, object_id, evaluate_object(joined["maps"], joined["masks"], joined["scores"], joined["labels"]))
        self.reset()
        self._step = step
        return [MetricValue(self, name, value, step) for name, value in self.result().items()]


class ForgettingMeasureMetric(PluginMetric[dict]):
    """FM of every metric over the steps completed so far (IB-IUMAD eq. 1), read from the matrices.

    Must come after :class:`AnomalyDetectionMetrics` in the ``EvaluationPlugin``
    so the current row is filled when it runs.
    """

    def __init__(self, matrices: ResultMatrices) -> None:
        super().__init__()
        self.matrices = matrices
        self._step: int | None = None

    def reset(self) -> None:
        self._step = None

    def result(self) -> dict[str, float]:
        if self._step is None:
            return {}
        values = {f"{name}/fm": self.matrices.forgetting(name, up_to_step=self._step) for name in METRICS}
        return {key: value for key, value in values.items() if np.isfinite(value)}

    def after_eval(self, strategy) -> list[MetricValue]:
        self._step = completed_steps(strategy) - 1
        return [MetricValue(self, name, value, self._step) for name, value in self.result().items()]
