"""Step x object result matrices, the single source of every reported figure.

``values[metric][s, o]`` is the metric of object ``o`` evaluated after step
``s``; NaN before ``o`` is learned. Final averages, per-step averages and the
forgetting measure are all derived from these matrices.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from incad import metrics

METRICS: dict[str, str] = {
    "i_auroc": "I-AUROC",
    "p_auroc": "P-AUROC",
    "aupro_30": "AUPRO@0.3",
    "aupro_1": "AUPRO@0.01",
}


def evaluate_object(maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of one object's test set; the pixel metrics share one sort of the scores."""
    pixel = metrics.pixel_metrics(maps, masks, fpr_limits=(0.3, 0.01))
    return {
        "i_auroc": metrics.image_auroc(scores, labels),
        "p_auroc": pixel["p_auroc"],
        "aupro_30": pixel["aupro@0.3"],
        "aupro_1": pixel["aupro@0.01"],
    }


@dataclass
class ResultMatrices:
    """The step x object matrices of every metric for one run."""

    class_names: list[str]
    num_steps: int
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in METRICS:
            self.values.setdefault(name, np.full((self.num_steps, len(self.class_names)), np.nan))

    def record(self, step: int, object_id: int, object_metrics: dict[str, float]) -> None:
        for name, value in object_metrics.items():
            self.values[name][step, object_id] = value

    def step_mean(self, metric: str, step: int) -> float:
        """Mean over the objects evaluated after ``step`` (NaN if none)."""
        row = self.values[metric][step]
        return float(np.nanmean(row)) if np.isfinite(row).any() else float("nan")

    def final_mean(self, metric: str) -> float:
        return self.step_mean(metric, self.num_steps - 1)

    def forgetting(self, metric: str, up_to_step: int | None = None) -> float:
        """FM of ``metric`` after ``up_to_step`` (default: the last step)."""
        last = self.num_steps - 1 if up_to_step is None else up_to_step
        return metrics.forgetting_measure(self.values[metric][: last + 1])

    def class_forgetting(self, metric: str) -> list[float]:
        """Each class's drop of ``metric`` (best earlier minus final; NaN for a class learned at the last step)."""
        return metrics.forgetting_per_object(self.values[metric]).tolist()

    def per_class(self) -> dict[str, dict[str, float]]:
        """Class -> ``<metric>`` (final value) and ``<metric>/fm`` (its drop), for every metric."""
        last = self.num_steps - 1
        forgetting = {name: self.class_forgetting(name) for name in METRICS}
        return {
            class_name: {
                key: value
                for name in METRICS
                for key, value in ((name, float(self.values[name][last, index])), (f"{name}/fm", forgetting[name][index]))
            }
            for index, class_name in enumerate(self.class_names)
        }

    def summary(self) -> dict[str, float]:
        """Final mean and FM of every metric, keyed ``<metric>/final_mean`` and ``<metric>/fm``."""
        result = {}
        for name in METRICS:
            result[f"{name}/final_mean"] = self.final_mean(name)
            result[f"{name}/fm"] = self.forgetting(name)
        return result

    def write_csv(self, folder: Path) -> list[Path]:
        """One CSV per metric: a row per step, a column per object."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, matrix in self.values.items():
            path = folder / f"{name}_matrix.csv"
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["step", *self.class_names])
                for step, row in enumerate(matrix):
                    writer.writerow([step, *("" if np.isnan(v) else f"{v:.6f}" for v in row)])
            paths.append(path)
        return paths
