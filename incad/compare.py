"""``incad compare``: one scenario, a grid of strategies x learners x seeds, one comparison table.

Every combination is a full :func:`incad.runner.run_experiment` in its own
nested MLflow run under one parent run; the parent gets the comparison table
(markdown and CSV) and the plots (mean metric vs step per strategy, step x
object I-AUROC heatmap per strategy) as artifacts, also written to
``<output_dir>/<name>-compare/``.

Figures per combination, then mean and std over seeds: final mean I-AUROC,
P-AUROC, AUPRO@0.3, AUPRO@0.01 and the FM of each (from the run's
``ResultMatrices``); training time (sum of the steps' ``strategy.train``
wall time); model size (all parameters, trainable parameters, MB of the
state dict); peak memory = the process's resident-set high-water mark
(``VmHWM``) during the combination, reset before it starts by writing 5 to
``/proc/self/clear_refs`` (Linux). It therefore includes the interpreter and
libraries already loaded and the in-memory feature cache; where
the reset is not permitted the whole-process high-water mark is reported.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from incad.config import RunConfig, load_config
from incad.errors import ConfigError
from incad.evaluation.results import METRICS, ResultMatrices
from incad.metrics import average_per_step
from incad.paths import path_within, safe_name
from incad.resolve import ResolvedRun, resolve
from incad.runner import run_experiment
from incad.tracking.mlflow_tracker import open_tracking_store, resolve_tracking_uri
from incad.tracking.paper_table import COMPARE_RUNS
from incad.tracking.plots import plot_heatmaps, plot_metric_vs_step

STRATEGY_PRESETS = Path("strategies")


@dataclass
class CombinationRun:
    """One run of the grid and the cost figures measured around it.

    Keeps the run's figures, not its learner: a grid of learners with their
    feature caches would inflate the memory of every later combination.
    """

    learner: str
    strategy: str
    seed: int
    config: RunConfig
    matrices: ResultMatrices
    summary: dict[str, float]
    train_seconds: float
    mlflow_run_id: str | None
    parameters: int
    trainable_parameters: int
    megabytes: float
    peak_rss_gib: float


@dataclass
class Comparison:
    """The grid's runs, the aggregated rows and where the table and plots were written."""

    runs: list[CombinationRun]
    rows: list[dict]
    table_markdown: str
    output_dir: Path
    files: list[Path]
    parent_run_id: str | None


def strategy_preset(name: str) -> Path | None:
    """A strategy YAML for ``name``: a path given as is, else ``strategies/<name>.yaml`` when it exists."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    preset = STRATEGY_PRESETS / f"{name}.yaml"
    return preset if preset.is_file() else None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process; False where not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """The process's resident-set high-water mark (VmHWM) in GiB."""
    match = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) / 2**20 if match else float("nan")


def combination_run(scenario: Path, strategy: str, learner: str | None, seed: int | None, overrides: list[str]) -> tuple[str, ResolvedRun]:
    """The resolved run of one grid cell, named ``<name>-<learner>-<strategy>-s<seed>``, and its strategy label."""
    preset = strategy_preset(strategy)
    label = preset.stem if preset else strategy
    grid_overrides = [] if preset else [f"strategy={strategy}"]
    if learner:
        grid_overrides.append(f"learner.name={learner}")
    if seed is not None:
        grid_overrides.append(f"seed={seed}")
    config = load_config(scenario, overrides=[*overrides, *grid_overrides], strategy_file=preset)
    name = f"{config.name}-{config.learner.name}-{label}-s{config.seed}"
    try:
        safe_name(name)
    except ValueError as exc:
        raise ConfigError(f"--strategies {strategy}: the run name {name!r} {exc}; rename the preset file") from None
    return label, resolve(config.model_copy(update={"name": name}), source=str(scenario))


def run_combination(label: str, run: ResolvedRun, show_progress: bool) -> CombinationRun:
    config = run.config
    gc.collect()
    reset_peak_rss()
    result = run_experiment(run, show_progress=show_progress)
    state = result.learner.state_dict()
    return CombinationRun(
        learner=config.learner.name,
        strategy=label,
        seed=config.seed,
        config=config,
        matrices=result.matrices,
        summary=result.summary,
        train_seconds=sum(result.step_seconds),
        mlflow_run_id=result.mlflow_run_id,
        parameters=sum(p.numel() for p in result.learner.parameters()),
        trainable_parameters=sum(p.numel() for p in result.learner.parameters() if p.requires_grad),
        megabytes=sum(t.numel() * t.element_size() for t in state.values()) / 2**20,
        peak_rss_gib=peak_rss_gib(),
    )


def aggregate(runs: list[CombinationRun]) -> list[dict]:
    """One row per (learner, strategy): mean and std over seeds of every figure."""
    groups: dict[tuple[str, str], list[CombinationRun]] = {}
    for run in runs:
        groups.setdefault((run.learner, run.strategy), []).append(run)
    rows = []
    for (learner, strategy), members in groups.items():
        figures: dict[str, list[float]] = {}
        for run in members:
            for name in METRICS:
                figures.setdefault(name, []).append(run.summary[f"{name}/final_mean"])
                figures.setdefault(f"{name}_fm", []).append(run.summary[f"{name}/fm"])
            figures.setdefault("train_seconds", []).append(run.train_seconds)
            figures.setdefault("peak_rss_gib", []).append(run.peak_rss_gib)
        row = {"learner": learner, "strategy": strategy, "seeds": len(members)}
        for key, values in figures.items():
            array = np.array(values, dtype=float)
            finite = array[np.isfinite(array)]
            row[f"{key}_mean"] = float(finite.mean()) if finite.size else float("nan")
            row[f"{key}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else float("nan"))
        row["parameters_m"] = members[0].parameters / 1e6
        row["trainable_parameters_m"] = members[0].trainable_parameters / 1e6
        row["megabytes"] = members[0].megabytes
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a markdown table; ``mean ± std`` where there is more than one seed."""
    metric_columns = [(name, label) for name, label in METRICS.items()] + [(f"{name}_fm", f"FM {label}") for name, label in METRICS.items()]
    header = ["learner", "strategy", "seeds", *(label for _, label in metric_columns), "train s", "params M (trainable)", "MB", "peak RSS GiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(row: dict, key: str, digits: int) -> str:
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        if not np.isfinite(mean):
            return "-"
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if row["seeds"] > 1 else f"{mean:.{digits}f}"

    for row in rows:
        cells = [row["learner"], row["strategy"], str(row["seeds"])]
        cells += [cell(row, key, 3) for key, _ in metric_columns]
        cells += [cell(row, "train_seconds", 1), f"{row['parameters_m']:.2f} ({row['trainable_parameters_m']:.2f})", f"{row['megabytes']:.1f}", cell(row, "peak_rss_gib", 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def seed_mean_matrices(runs: list[CombinationRun], metric: str) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per (learner, strategy) label: the step x object matrix of ``metric`` averaged over seeds."""
    grouped: dict[str, list[np.ndarray]] = {}
    names: dict[str, list[str]] = {}
    for run in runs:
        label = f"{run.strategy} ({run.learner})"
        grouped.setdefault(label, []).append(run.matrices.values[metric])
        names[label] = run.matrices.class_names
    return {label: (np.mean(np.stack(matrices), axis=0), names[label]) for label, matrices in grouped.items()}


def write_member_list(runs: list[CombinationRun], output_dir: Path, parent_run_id: str | None, tracking_uri: str | None) -> Path:
    """``runs.json``: each member run's folder (relative to the outputs folder) and label, and the parent MLflow run, for ``incad report``."""
    members = [
        {"label": f"{run.strategy} ({run.learner}) s{run.seed}", "folder": os.path.relpath(path_within(run.config.output_dir, run.config.name), output_dir.parent)}
        for run in runs
    ]
    listing: dict = {"runs": members}
    if parent_run_id:
        listing["mlflow"] = {"run_id": parent_run_id, "tracking_uri": resolve_tracking_uri(tracking_uri)}
    path = output_dir / COMPARE_RUNS
    path.write_text(json.dumps(listing, indent=2))
    return path


def run_comparison(
    scenario: Path,
    strategies: list[str],
    learners: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    show_progress: bool = True,
) -> Comparison:
    """Run every (learner, strategy, seed) of the grid and write the comparison."""
    overrides = list(overrides or [])
    base = load_config(scenario, overrides=overrides)
    # Every cell is validated before the first one runs: a typo fails at once, not after hours.
    grid = [
        combination_run(scenario, strategy, learner, seed, overrides)
        for learner in (learners or [None])
        for strategy in strategies
        for seed in (seeds or [None])
    ]
    output_dir = path_within(base.output_dir, f"{base.name}-compare")
    output_dir.mkdir(parents=True, exist_ok=True)
    tracking = base.tracking
    parent_run_id = None
    if tracking.enabled:
        open_tracking_store(tracking.tracking_uri, tracking.experiment)
        parent = mlflow.start_run(run_name=f"{base.name}-compare")
        parent_run_id = parent.info.run_id
        mlflow.log_params({"strategies": ",".join(strategies), "learners": ",".join(learners or [base.learner.name]), "seeds": ",".join(map(str, seeds or [base.seed]))})
    try:
        runs = [run_combination(label, run, show_progress) for label, run in grid]
        rows = aggregate(runs)
        table = markdown_table(rows)
        markdown_path = output_dir / "comparison.md"
        markdown_path.write_text(table + "\n")
        files = [markdown_path, write_csv(rows, output_dir / "comparison.csv"), write_member_list(runs, output_dir, parent_run_id, tracking.tracking_uri)]
        per_metric = {name: seed_mean_matrices(runs, name) for name in METRICS}
        curves = {label: {name: average_per_step(per_metric[name][label][0]) for name in METRICS} for label in per_metric["i_auroc"]}
        files.append(plot_metric_vs_step(curves, output_dir / "metric_vs_step.png"))
        files.append(plot_heatmaps(per_metric["i_auroc"], "I-AUROC", output_dir / "heatmap_i_auroc.png"))
        if tracking.enabled:
            for path in files:
                mlflow.log_artifact(str(path))
    except BaseException:
        if tracking.enabled:
            mlflow.end_run(status="FAILED")
        raise
    if tracking.enabled:
        mlflow.end_run()
    return Comparison(runs, rows, table, output_dir, files, parent_run_id)

