"""Data pipeline figures: preprocessing speed (grid components vs DBSCAN, serial vs parallel) and training
time per epoch without a feature cache, with the in-memory cache, and with the disk cache (cold, then warm in a new run).

Preprocessing runs BTF's settings on the real MVTec 3D-AD subset in ../shared/data/mvtec3d_mini.
Training runs the scenario as one joint step (every class at once) so the time per epoch is
step time / epochs; each variant is a fresh run in this process with a scratch cache and MLflow store.

    .venv/bin/python benchmarks/bench_data.py                       # full figures
    .venv/bin/python benchmarks/bench_data.py --preprocessing-only --clustering grid   # samples/s of the default preprocessing
    .venv/bin/python benchmarks/bench_data.py --samples 4 --epochs 2 --set dataset.synthetic.train_per_class=8 \
        --set dataset.synthetic.test_good_per_class=2 --set dataset.synthetic.test_defect_per_class=1 --set dataset.image_size=64
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import add_threads_option, start_benchmark

from incad.config import load_config
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.preprocess import PreprocessingConfig, preprocess_dataset
from incad.runner import run_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
MINI = REPO_ROOT.parent / "shared" / "data" / "mvtec3d_mini"


def _subset(source: Path, target: Path, samples: int) -> int:
    """Copy the first ``samples`` of each split folder of the mini set (all when 0); returns the count."""
    count = 0
    for rgb_dir in sorted(source.glob("*/*/*/rgb")):
        stems = [path.stem for path in sorted(rgb_dir.glob("*.png"))][: samples or None]
        for sub in ("rgb", "xyz", "gt"):
            for stem in stems:
                for path in (rgb_dir.parent / sub).glob(f"{stem}.*"):
                    destination = target / path.relative_to(source)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, destination)
        count += len(stems)
    return count


def bench_preprocessing(samples: int, workers: int, clusterings: list[str], scratch: Path) -> None:
    source = scratch / "mini"
    count = _subset(MINI, source, samples)
    warm_up = scratch / "warm-up"
    _subset(MINI, warm_up, 1)
    for clustering in clusterings:  # imports (open3d) and the numba kernel's load happen once per process, not per sample
        preprocess_dataset(MVTEC3D, warm_up, PreprocessingConfig(enabled=True, clustering=clustering, workers=1), scratch / "cache-warm-up", show_progress=False)
    print(
        f"\nPreprocessing (BTF settings) of {count} real samples, {os.cpu_count()} cores; wall time, serial after a warm-up "
        "in this process, parallel including the start of the pool's processes:"
    )
    print("| clustering | processes | s/sample | samples/s | total s |")
    print("|---|---|---|---|---|")
    for clustering in clusterings:
        for processes in sorted({1, workers}):
            settings = PreprocessingConfig(enabled=True, clustering=clustering, workers=processes)
            started = time.perf_counter()
            preprocess_dataset(MVTEC3D, source, settings, scratch / f"cache-{clustering}-{processes}", show_progress=False)
            seconds = time.perf_counter() - started
            print(f"| {clustering} | {processes} | {seconds / count:.3f} | {count / seconds:.1f} | {seconds:.1f} |", flush=True)
    settings = PreprocessingConfig(enabled=True, clustering=clusterings[0], workers=1)
    started = time.perf_counter()
    assert preprocess_dataset(MVTEC3D, source, settings, scratch / f"cache-{clusterings[0]}-1", show_progress=False).reused
    print(f"cached: {time.perf_counter() - started:.3f} s for the whole set (a second run reuses the cache)")


def _epoch_seconds(scenario: str, overrides: list[str], epochs: int, scratch: Path, name: str) -> float:
    config = load_config(
        scenario,
        overrides=[
            f"output_dir={scratch / 'outputs'}",
            f"name={name}",
            f"tracking.tracking_uri=sqlite:///{scratch / 'mlflow.db'}",
            f"dataset.cache_dir={scratch / 'cache'}",
            f"training.epochs={epochs}",
            *overrides,
        ],
    )
    classes = len(config.scenario.classes) or config.scenario.num_classes
    joint = config.scenario.model_copy(update={"base": classes, "increment": 0, "steps": 0})
    result = run_experiment(config.model_copy(update={"scenario": joint}), show_progress=False)
    return sum(result.step_seconds) / epochs


def bench_training(label: str, scenario: str, overrides: list[str], epochs: int, scratch: Path) -> None:
    print(f"\nTraining time per epoch, {label} ({epochs} epochs, all classes in one step):")
    variants = [
        ("no feature cache", ["learner.cache_features=false"]),
        ("memory cache", ["training.feature_cache=memory"]),
        ("disk cache, cold", ["training.feature_cache=disk"]),
        ("disk cache, warm", ["training.feature_cache=disk"]),  # a new run: features come from disk
    ]
    baseline = None
    for index, (variant, extra) in enumerate(variants):
        seconds = _epoch_seconds(scenario, [*overrides, *extra], epochs, scratch, f"bench-{index}")
        baseline = baseline or seconds
        print(f"  {variant:<18} {seconds:8.2f} s/epoch  (speed-up {baseline / seconds:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=0, help="samples per split folder of the mini set (0 = all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quickstart", default=str(REPO_ROOT / "experiments" / "quickstart.yaml"))
    parser.add_argument("--set", action="append", default=[], help="override for the quickstart runs")
    parser.add_argument("--clustering", nargs="+", default=["grid", "dbscan"], choices=["grid", "dbscan"], help="preprocessing methods to time")
    parser.add_argument("--preprocessing-only", action="store_true", help="skip the training-time figures")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    with tempfile.TemporaryDirectory(prefix="incad-bench-data-") as scratch_name:
        scratch = Path(scratch_name)
        if (MINI / "cable_gland").is_dir():
            bench_preprocessing(args.samples, args.workers, args.clustering, scratch)
        else:
            print(f"(no real subset at {MINI}: preprocessing and real-data figures skipped)")
        if args.preprocessing_only:
            return
        bench_training("quickstart", args.quickstart, args.set, args.epochs, scratch / "quickstart")
        if (MINI / "cable_gland").is_dir():
            mini = scratch / "mini-run"
            _subset(MINI, mini, args.samples)
            mini_overrides = [
                "dataset.name=mvtec3d",
                f"dataset.root={mini}",
                "scenario.classes=[cable_gland]",
                *[item for item in args.set if item.startswith("dataset.image_size")],
            ]
            bench_training("real mini subset (cable_gland)", args.quickstart, mini_overrides, args.epochs, scratch / "mini")


if __name__ == "__main__":
    main()
