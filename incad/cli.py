"""Command line: ``incad run``, ``incad compare``, ``incad report``, ``incad predict`` and ``incad data synth|prepare|check``.

Errors that incad raises on purpose (bad config, bad data) print as one
paragraph naming the key or file, with exit code 2, instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from incad.data.names import DATASET_NAMES
from incad.errors import IncadError
from incad.evaluation.results import METRICS, ResultMatrices


def format_results_table(matrices: ResultMatrices) -> str:
    """Final value per class, the mean over classes and the forgetting measure, one column per metric."""
    last = matrices.num_steps - 1
    width = max(12, *(len(name) for name in matrices.class_names))
    header = f"{'class':<{width}}" + "".join(f"{label:>12}" for label in METRICS.values())
    lines = [header, "-" * len(header)]

    def cell(value: float) -> str:
        return f"{value:>12.3f}" if np.isfinite(value) else f"{'-':>12}"

    for object_id, class_name in enumerate(matrices.class_names):
        lines.append(f"{class_name:<{width}}" + "".join(cell(matrices.values[m][last, object_id]) for m in METRICS))
    lines.append("-" * len(header))
    lines.append(f"{'mean':<{width}}" + "".join(cell(matrices.final_mean(m)) for m in METRICS))
    lines.append(f"{'FM':<{width}}" + "".join(cell(matrices.forgetting(m)) for m in METRICS))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from incad.resolve import load_run
    from incad.runner import run_experiment

    run = load_run(args.scenario, overrides=args.set, strategy_file=args.strategy)
    config = run.config
    result = run_experiment(run, show_progress=not args.no_progress, resume=args.resume, force=args.force)
    from incad.distributed import is_main_process

    if not is_main_process():  # torchrun: rank 0 reports
        return 0
    split = config.scenario
    setting = f"{split.base}-{split.increment} with {split.steps} steps"
    if split.split_files is not None:
        setting = f"split files {split.split_files.folder} ({result.scenario.num_steps} steps)"
    print(
        f"\n{config.name}: {setting}, {split.modality}, "
        f"learner {config.learner.name}, strategy {config.strategy.name}; "
        f"training {sum(result.step_seconds):.1f} s"
    )
    print(format_results_table(result.matrices))
    print(f"\nOutputs in {result.output_dir}")
    if result.mlflow_run_id:
        from incad.tracking.mlflow_tracker import resolve_tracking_uri

        uri = resolve_tracking_uri(config.tracking.tracking_uri)
        browse = f"open {uri}" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
        print(f"MLflow run {result.mlflow_run_id} in {uri}; browse with: {browse}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import mlflow

    from incad.predict import predict, summary
    from incad.tracking.mlflow_tracker import resolve_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files; bars would bury an error line
    mlflow.set_tracking_uri(resolve_tracking_uri(args.tracking_uri))
    try:
        prediction = predict(args.model, args.inputs, args.out, overwrite=args.overwrite, object_name=args.object)
    except mlflow.exceptions.MlflowException as exc:
        raise IncadError(f"--model {args.model}: {exc.message} (registry {mlflow.get_tracking_uri()}; pass --tracking-uri or set MLFLOW_TRACKING_URI)") from None
    print(summary(prediction))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from incad.compare import RayOptions, run_comparison

    if args.executor != "ray" and (args.address or args.cpus_per_run is not None or args.gpus_per_run is not None):
        raise IncadError("--address, --cpus-per-run and --gpus-per-run go with --executor ray")
    ray_options = RayOptions(args.address, args.cpus_per_run if args.cpus_per_run is not None else 1.0, args.gpus_per_run or 0.0)
    comparison = run_comparison(
        args.scenario,
        strategies=_names(args.strategies),
        learners=_names(args.learners) if args.learners else None,
        seeds=[int(seed) for seed in _names(args.seeds)] if args.seeds else None,
        overrides=args.set,
        show_progress=not args.no_progress,
        executor=args.executor,
        ray_options=ray_options,
    )
    print(comparison.table_markdown)
    print(f"\nTable, plots and per-run outputs in {comparison.output_dir}")
    if comparison.failures:
        print(f"{len(comparison.failures)} combination(s) failed (the 'failed' column; tracebacks above)", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from incad.tracking.paper_table import log_report, write_report

    paths, mlflow_run = write_report(args.folder)
    print(paths[0].read_text())
    print("Written: " + ", ".join(str(path) for path in paths))
    if mlflow_run and not args.no_log:
        log_report(paths, mlflow_run)
        print(f"Logged to MLflow run {mlflow_run['run_id']} in {mlflow_run['tracking_uri']}")
    return 0


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from incad.config import parse_overrides, set_dotted
    from incad.data.synthetic import SyntheticConfig, generate

    settings: dict = {}
    for key, value in parse_overrides(args.set):
        set_dotted(settings, key, value)
    try:
        synthetic = SyntheticConfig.model_validate(settings)
    except ValidationError as exc:  # pydantic's message names the field
        raise IncadError(f"incad data synth --set: {exc}") from None
    root = generate(synthetic, Path(args.out))
    print(f"Synthetic dataset written to {root}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from incad.config import load_config
    from incad.data.check import format_counts
    from incad.data.datasets import prepare_dataset
    from incad.scenario import scenario_classes

    config = load_config(args.scenario, overrides=args.set)
    classes = scenario_classes(config)
    prepared = prepare_dataset(config.dataset, classes, show_progress=not args.no_progress)
    print(f"Dataset ready in {prepared.root}")
    print(format_counts(prepared.counts or prepared.sample_counts(classes)))
    if prepared.skipped:
        print(f"{len(prepared.skipped)} bad sample(s) left out (dataset.on_bad_sample: skip):")
        print("\n".join(f"  - {line}" for line in prepared.skipped))
    return 0


def _check(args: argparse.Namespace) -> int:
    from incad.data.check import check_dataset
    from incad.data.readers.registry import create_reader

    report = check_dataset(args.root, create_reader(args.dataset, args.light), show_progress=sys.stderr.isatty())
    print(report.format())
    return 0 if report.clean else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incad", description="Incremental unified multimodal anomaly detection.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a class-incremental scenario from YAML")
    run.add_argument("scenario", type=Path, help="scenario YAML, e.g. experiments/quickstart.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=5")
    run.add_argument("--strategy", type=Path, default=None, help="a strategy YAML (strategies/*.yaml) replacing the scenario's strategy section")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--resume", action="store_true", help="continue from the last completed step's checkpoint (same YAML and --set)")
    run.add_argument(
        "--force",
        action="store_true",
        help="run even when outputs/<name>/run.lock is held by another process (or cannot be taken on this file system); "
        "the lock is released when its process ends, kill -9 included, so use this only when you know that process no "
        "longer writes there: two runs in one folder mix their checkpoints",
    )
    run.set_defaults(handler=_run)

    compare = commands.add_parser("compare", help="run a grid of strategies (x learners x seeds) and compare them")
    compare.add_argument("scenario", type=Path, help="scenario YAML, e.g. experiments/compare/synthetic-4steps.yaml")
    compare.add_argument("--strategies", required=True, help="comma-separated strategy names or strategies/*.yaml presets, e.g. naive,replay,ewc")
    compare.add_argument("--learners", default=None, help="comma-separated learner names (default: the scenario's learner)")
    compare.add_argument("--seeds", default=None, help="comma-separated seeds (default: the scenario's seed)")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value of every run")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.add_argument("--executor", default="local", choices=["local", "ray"], help="local: one combination after another here; ray: each a Ray task")
    compare.add_argument("--address", default=None, help="with --executor ray: 'auto' or the Ray cluster address (default: start a local Ray)")
    compare.add_argument("--cpus-per-run", type=float, default=None, help="with --executor ray: CPUs each combination reserves (default 1)")
    compare.add_argument("--gpus-per-run", type=float, default=None, help="with --executor ray: GPUs each combination reserves (default 0)")
    compare.set_defaults(handler=_compare)

    report = commands.add_parser("report", help="per-class I-AUROC/AUPRO/FM table of a run or comparison (IB-IUMAD Table 1 layout)")
    report.add_argument("folder", type=Path, help="a run's output folder (outputs/<name>) or a comparison's (outputs/<name>-compare)")
    report.add_argument("--no-log", action="store_true", help="write the files only; do not log them to the MLflow run")
    report.set_defaults(handler=_report)

    predict = commands.add_parser("predict", help="score images with a registered model")
    predict.add_argument("--model", required=True, help="a model URI, e.g. models:/quickstart@champion")
    predict.add_argument("inputs", type=Path, nargs="+", help="RGB image files or folders (xyz/NNN.tiff siblings are used for depth)")
    predict.add_argument("--out", type=Path, default=Path("predictions"), help="output folder for scores and overlays")
    predict.add_argument("--overwrite", action="store_true", help="replace an earlier prediction (scores.csv, scores.json, overlays) in --out")
    predict.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    predict.add_argument("--object", default=None, help="the class of every input image, for learners whose map uses it (text_guided); default: unknown")
    predict.set_defaults(handler=_predict)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the synthetic RGB+3D dataset in MVTec 3D-AD layout")
    synth.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output folder")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="generator setting, e.g. num_classes=6")
    synth.set_defaults(handler=_synth)

    prepare = data.add_parser("prepare", help="resolve, preprocess and cache a scenario's dataset; print counts per class and split")
    prepare.add_argument("scenario", type=Path, help="scenario YAML, e.g. experiments/mvtec3d/10-0.yaml")
    prepare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. dataset.root=...")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(handler=_prepare)

    check = data.add_parser("check", help="validate a dataset folder and list every problem with its file")
    check.add_argument("root", type=Path, help="the dataset folder (one sub-folder per class)")
    check.add_argument("--dataset", default="mvtec3d", choices=DATASET_NAMES, help="folder layout")
    check.add_argument("--light", type=int, default=4, help="Eyecandies: which image_<light>.png is the RGB image")
    check.set_defaults(handler=_check)
    return parser


def _silence_third_party_noise() -> None:
    """Warnings that say nothing to an incad user (optional solvers of a dependency, Avalanche's logger default)."""
    warnings.filterwarnings("ignore", message="no QP solver found")
    warnings.filterwarnings("ignore", message="No loggers specified")


def main(argv: list[str] | None = None) -> int:
    _silence_third_party_noise()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except IncadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
