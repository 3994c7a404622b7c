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

Executors: ``local`` runs the combinations one after another in this
process; ``ray`` runs each as a Ray task (``ray.init`` with ``address``, or a
local Ray on this machine's cores without one) with ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs, logging to the same tracking store as a nested run of
the parent, which stays in this process. Both return the same outcomes, so
the table and plots do not depend on the executor. A combination that raises
is reported in the table (``failed`` column) and the others still run.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
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
from incad.writable import SERVER_PREFIXES, require_answering_server

STRATEGY_PRESETS = Path("strategies")
EXECUTORS = ("local", "ray")


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
class CombinationFailure:
    """A combination that raised: which one and why, in one line (the traceback goes to the log)."""

    learner: str
    strategy: str
    seed: int
    error: str


@dataclass
class RayOptions:
    """Where and with what each combination runs on Ray: ``address`` None starts a local Ray."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0


@dataclass
class Comparison:
    """The grid's runs, the failed combinations, the aggregated rows and where the table and plots were written."""

    runs: list[CombinationRun]
    failures: list[CombinationFailure]
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


def run_combination(label: str, run: ResolvedRun, show_progress: bool, parent_run_id: str | None = None) -> CombinationRun:
    config = run.config
    gc.collect()
    reset_peak_rss()
    result = run_experiment(run, show_progress=show_progress, parent_run_id=parent_run_id)
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


def attempt_combination(label: str, run: ResolvedRun, show_progress: bool, parent_run_id: str | None) -> CombinationRun | CombinationFailure:
    """:func:`run_combination`, or the failure it raised: one combination's error must not lose the grid."""
    try:
        return run_combination(label, run, show_progress, parent_run_id)
    except Exception as exc:
        logging.getLogger("incad").error("incad compare: %s failed", run.config.name, exc_info=True)
        return combination_failure(label, run, exc)


def combination_failure(label: str, run: ResolvedRun, exc: BaseException) -> CombinationFailure:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return CombinationFailure(run.config.learner.name, label, run.config.seed, f"{type(exc).__name__}: {first_line}")


def _attempt_on_ray_worker(label: str, run: ResolvedRun, parent_run_id: str | None, threads: int) -> CombinationRun | CombinationFailure:
    """The Ray task: a worker process is reused across tasks, so it takes its CPU share for torch each time."""
    import torch

    torch.set_num_threads(threads)
    return attempt_combination(label, run, False, parent_run_id)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'incad[distributed]'") from None
    return ray


def run_grid_on_ray(grid: list[tuple[str, ResolvedRun]], parent_run_id: str | None, options: RayOptions) -> list[CombinationRun | CombinationFailure]:
    """Every combination as a Ray task; a task that Ray itself loses (a dead worker) is reported as that combination's failure.

    A local Ray started here is shut down at the end; a Ray this process was
    already connected to is left as it is.
    """
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False)
    try:
        task = ray.remote(_attempt_on_ray_worker).options(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=0)
        threads = max(1, int(options.cpus_per_run))
        futures = [task.remote(label, run, parent_run_id, threads) for label, run in grid]
        outcomes: list[CombinationRun | CombinationFailure] = []
        for (label, run), future in zip(grid, futures):
            try:
                outcomes.append(ray.get(future))
            except ray.exceptions.RayError as exc:
                outcomes.append(combination_failure(label, run, exc))
        return outcomes
    finally:
        if started_here:
            ray.shutdown()


def run_grid(
    grid: list[tuple[str, ResolvedRun]], executor: str, show_progress: bool, parent_run_id: str | None, ray_options: RayOptions | None
) -> list[CombinationRun | CombinationFailure]:
    """The outcome of every combination, in grid order, whichever executor ran it."""
    if executor == "local":
        return [attempt_combination(label, run, show_progress, parent_run_id) for label, run in grid]
    return run_grid_on_ray(grid, parent_run_id, ray_options or RayOptions())


def aggregate(runs: list[CombinationRun], failures: list[CombinationFailure] | None = None) -> list[dict]:
    """One row per (learner, strategy): mean and std over seeds of every figure.

    With failures, every row gets a ``failed`` cell (``s<seed>: <error>`` per
    failed seed); a (learner, strategy) whose every seed failed is a row of
    ``seeds`` 0 and empty figures.
    """
    groups: dict[tuple[str, str], list[CombinationRun]] = {}
    failed: dict[tuple[str, str], list[CombinationFailure]] = {}
    for run in runs:
        groups.setdefault((run.learner, run.strategy), []).append(run)
    for failure in failures or []:
        groups.setdefault((failure.learner, failure.strategy), [])
        failed.setdefault((failure.learner, failure.strategy), []).append(failure)
    rows = []
    for (learner, strategy), members in groups.items():
        if not members:
            row = {"learner": learner, "strategy": strategy, "seeds": 0}
            row.update({key: float("nan") for key in figure_columns()})
            row["failed"] = failed_cell(failed[learner, strategy])
            rows.append(row)
            continue
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
        if failures:
            row["failed"] = failed_cell(failed.get((learner, strategy), []))
        rows.append(row)
    return rows


def figure_columns() -> list[str]:
    """The numeric columns of a row, in the order :func:`aggregate` writes them."""
    keys = [key for name in METRICS for key in (name, f"{name}_fm")] + ["train_seconds", "peak_rss_gib"]
    return [f"{key}_{stat}" for key in keys for stat in ("mean", "std")] + ["parameters_m", "trainable_parameters_m", "megabytes"]


def failed_cell(failures: list[CombinationFailure]) -> str:
    return "; ".join(f"s{failure.seed}: {failure.error}" for failure in failures)


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a markdown table; ``mean ± std`` where there is more than one seed."""
    metric_columns = [(name, label) for name, label in METRICS.items()] + [(f"{name}_fm", f"FM {label}") for name, label in METRICS.items()]
    header = ["learner", "strategy", "seeds", *(label for _, label in metric_columns), "train s", "params M (trainable)", "MB", "peak RSS GiB"]
    with_failures = any("failed" in row for row in rows)
    if with_failures:
        header.append("failed")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(row: dict, key: str, digits: int) -> str:
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        if not np.isfinite(mean):
            return "-"
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if row["seeds"] > 1 else f"{mean:.{digits}f}"

    for row in rows:
        cells = [row["learner"], row["strategy"], str(row["seeds"])]
        cells += [cell(row, key, 3) for key, _ in metric_columns]
        size = f"{row['parameters_m']:.2f} ({row['trainable_parameters_m']:.2f})" if row["seeds"] else "-"
        cells += [cell(row, "train_seconds", 1), size, f"{row['megabytes']:.1f}" if row["seeds"] else "-", cell(row, "peak_rss_gib", 2)]
        if with_failures:
            cells.append(row["failed"].replace("|", "/"))
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
    executor: str = "local",
    ray_options: RayOptions | None = None,
) -> Comparison:
    """Run every (learner, strategy, seed) of the grid with ``executor`` (see the module docstring) and write the comparison."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor}: unknown; choose one of {', '.join(EXECUTORS)}")
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
        uri = resolve_tracking_uri(tracking.tracking_uri)
        if uri.startswith(SERVER_PREFIXES):
            require_answering_server(uri)
        open_tracking_store(uri, tracking.experiment)
        parent = mlflow.start_run(run_name=f"{base.name}-compare")
        parent_run_id = parent.info.run_id
        mlflow.log_params({"strategies": ",".join(strategies), "learners": ",".join(learners or [base.learner.name]), "seeds": ",".join(map(str, seeds or [base.seed]))})
    try:
        outcomes = run_grid(grid, executor, show_progress, parent_run_id, ray_options)
        runs = [outcome for outcome in outcomes if isinstance(outcome, CombinationRun)]
        failures = [outcome for outcome in outcomes if isinstance(outcome, CombinationFailure)]
        rows = aggregate(runs, failures)
        table = markdown_table(rows)
        markdown_path = output_dir / "comparison.md"
        markdown_path.write_text(table + "\n")
        files = [markdown_path, write_csv(rows, output_dir / "comparison.csv"), write_member_list(runs, output_dir, parent_run_id, tracking.tracking_uri)]
        if runs:
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
        mlflow.end_run(status="FINISHED" if runs else "FAILED")
    return Comparison(runs, failures, rows, table, output_dir, files, parent_run_id)

