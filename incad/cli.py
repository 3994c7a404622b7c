"""Command line: ``incad run`` and ``incad data synth``.

Errors that incad raises on purpose (bad config, bad data) print as one
paragraph naming the key or file, with exit code 2, instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

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
    from incad.config import load_config
    from incad.runner import run_experiment

    config = load_config(args.scenario, overrides=args.set, strategy_file=args.strategy)
    result = run_experiment(config, show_progress=not args.no_progress)
    split = config.scenario
    print(
        f"\n{config.name}: {split.base}-{split.increment} with {split.steps} steps, {split.modality}, "
        f"learner {config.learner.name}, strategy {config.strategy.name}; "
        f"training {sum(result.step_seconds):.1f} s"
    )
    print(format_results_table(result.matrices))
    print(f"\nOutputs in {result.output_dir}")
    if result.mlflow_run_id:
        from incad.tracking.mlflow_tracker import resolve_tracking_uri

        uri = resolve_tracking_uri(config.tracking.tracking_uri)
        print(f"MLflow run {result.mlflow_run_id} in {uri}; browse with: mlflow ui --backend-store-uri {uri}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="incad", description="Incremental unified multimodal anomaly detection.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a class-incremental scenario from YAML")
    run.add_argument("scenario", type=Path, help="scenario YAML, e.g. experiments/quickstart.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=5")
    run.add_argument("--strategy", type=Path, default=None, help="a strategy YAML (strategies/*.yaml) replacing the scenario's strategy section")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the synthetic RGB+3D dataset in MVTec 3D-AD layout")
    synth.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output folder")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="generator setting, e.g. num_classes=6")
    synth.set_defaults(handler=_synth)
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
