"""Figures of the result matrices, saved as PNG for MLflow and the output folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from incad.evaluation.results import METRICS, ResultMatrices  # noqa: E402


def plot_metric_per_class(matrices: ResultMatrices, path: Path) -> Path:
    """One panel per metric: each object's value after every step, and the mean."""
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 3.6), squeeze=False)
    steps = np.arange(matrices.num_steps)
    for axis, (name, label) in zip(axes[0], METRICS.items()):
        matrix = matrices.values[name]
        for object_id, class_name in enumerate(matrices.class_names):
            axis.plot(steps, matrix[:, object_id], marker="o", label=class_name)
        means = [matrices.step_mean(name, step) for step in steps]
        axis.plot(steps, means, color="black", linestyle="--", linewidth=2, label="mean")
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.set_xticks(steps)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
