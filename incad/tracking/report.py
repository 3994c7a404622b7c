"""The files a finished run leaves in its output folder (and logs as MLflow artifacts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from incad.evaluation.results import ResultMatrices
from incad.tracking.plots import plot_metric_per_class


def report_skipped(skipped: list[str], output_dir: Path) -> list[Path]:
    """Warn about the bad samples a run left out and list them in ``skipped_samples.txt``."""
    if not skipped:
        return []
    logging.getLogger("incad").warning("%d bad sample(s) skipped (dataset.on_bad_sample: skip):\n  %s", len(skipped), "\n  ".join(skipped))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "skipped_samples.txt"
    path.write_text("\n".join(skipped) + "\n")
    return [path]


def write_run_report(
    output_dir: Path,
    matrices: ResultMatrices,
    summary: dict[str, float],
    step_seconds: list[float],
    classes: list[str],
    skipped: list[str],
    learner_report: dict[str, float],
    shot_samples: dict[str, list[str]],
    mlflow_run: dict[str, str] | None = None,
) -> list[Path]:
    """The step x object CSVs, the per-class plot, the skipped list and ``results.json``; returns their paths.

    ``results.json`` holds the final means and FM (``summary``), each class's
    final value and drop (``per_class``) and, with tracking, the MLflow run
    (``mlflow``: ``run_id``, ``tracking_uri``) that ``incad report`` logs its tables to.
    ``shot_samples`` (few-shot runs) lists each class's training samples, relative to the dataset root.
    """
    artifacts = [*matrices.write_csv(output_dir), plot_metric_per_class(matrices, output_dir / "metrics_per_class.png")]
    artifacts += report_skipped(skipped, output_dir)
    results_path = output_dir / "results.json"
    results = {
        "summary": summary,
        "per_class": matrices.per_class(),
        "step_seconds": step_seconds,
        "classes": classes,
        "skipped_samples": skipped,
        "learner_report": learner_report,
    }
    if shot_samples:
        results["shot_samples"] = shot_samples
    if mlflow_run:
        results["mlflow"] = mlflow_run
    results_path.write_text(json.dumps(results, indent=2))
    return [*artifacts, results_path]
