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
    return _save(figure, path)


def plot_metric_vs_step(curves: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """One panel per metric, one line per strategy: the mean over the classes seen after each step.

    A single-step curve (``joint``: every class at once) is drawn as a dashed
    horizontal line, the upper bound the continual strategies are read against.
    """
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 3.6), squeeze=False)
    longest = max(len(next(iter(per_metric.values()))) for per_metric in curves.values())
    steps = np.arange(longest)
    for axis, (name, label) in zip(axes[0], METRICS.items()):
        for strategy, per_metric in curves.items():
            values = per_metric[name]
            if len(values) == 1:
                axis.axhline(values[0], linestyle="--", linewidth=1.5, color="grey", label=strategy)
            else:
                axis.plot(np.arange(len(values)), values, marker="o", label=strategy)
        axis.set_title(f"{label} (mean over seen classes)")
        axis.set_xlabel("step")
        axis.set_xticks(steps)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    return _save(figure, path)


def plot_heatmaps(matrices: dict[str, tuple[np.ndarray, list[str]]], metric_label: str, path: Path) -> Path:
    """One step x object heatmap per strategy, values written in the cells (blank before a class is learned)."""
    columns = min(3, len(matrices))
    rows = -(-len(matrices) // columns)
    width = 0.8 * max(len(names) for _, names in matrices.values()) + 1.0
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns + 1.0, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(matrices) :]:
        axis.set_visible(False)
    for axis, (strategy, (matrix, class_names)) in zip(axes.flat, matrices.items()):
        image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (step, column), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                axis.text(column, step, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
        axis.set_title(f"{strategy}: {metric_label}", fontsize=9)
        axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(matrix.shape[0]))
        axis.set_ylabel("after step")
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path
