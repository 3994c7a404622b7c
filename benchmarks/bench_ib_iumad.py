"""IB-IUMAD vs the plain reconstruction learner, and the Table 5 ablation, in one run.

All runs use the quickstart scenario (5 synthetic classes, 3-1 with 2 steps,
rgb+depth, naive fine-tuning) with the same seed; the table gives final mean
I-AUROC / P-AUROC / AUPRO@0.3, FM of I-AUROC, training time, inference
images/s (rgb+depth, 224x224, CPU, feature cache off) and peak memory of a
forward pass.

    .venv/bin/python benchmarks/bench_ib_iumad.py [--epochs 15] [--set dataset.image_size=128 ...]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from incad.config import load_config
from incad.data.sample import Batch
from incad.models.backbones.cache import FeatureCache
from incad.runner import build_learner, run_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "reconstruction (plain)": {"learner.name": "reconstruction"},
    "IB-IUMAD (Mamba on, IBFM on)": {"learner.name": "ib_iumad"},
    "Mamba on, IBFM off": {"learner.name": "ib_iumad", "learner.ibfm": False},
    "Mamba off, IBFM on": {"learner.name": "ib_iumad", "learner.mamba": False},
    "Mamba off, IBFM off": {"learner.name": "ib_iumad", "learner.mamba": False, "learner.ibfm": False},
}


def random_batch(size: int, count: int = 16) -> Batch:
    """A batch of random RGB, depth and point clouds (every pixel valid): inputs for speed measurements."""
    return Batch(
        image=torch.rand(count, 3, size, size), mask=torch.zeros(count, size, size), label=torch.zeros(count, dtype=torch.long),
        object_id=torch.zeros(count, dtype=torch.long), defect_type=["good"] * count, path=[str(i) for i in range(count)],
        depth=torch.rand(count, 1, size, size), xyz=torch.rand(count, 3, size, size), valid=torch.ones(count, size, size, dtype=torch.bool),
    )


def inference_images_per_second(config) -> float:
    return learner_images_per_second(build_learner(config, num_objects=5), config.dataset.image_size)


def learner_images_per_second(learner, size: int) -> float:
    """Anomaly maps per second of a batch of 16, every feature cache off (one warm-up batch)."""
    learner.eval()
    for name, value in list(vars(learner).items()):
        if isinstance(value, FeatureCache):
            setattr(learner, name, None)
    batch = random_batch(size)
    with torch.inference_mode():
        learner.anomaly_map(batch)
        started = time.perf_counter()
        for _ in range(3):
            learner.anomaly_map(batch)
    return 48 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run, e.g. dataset.image_size=128")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="incad-bench-") as scratch:
        for label, overrides in RUNS.items():
            sets = [f"{k}={v}" for k, v in overrides.items()] + [
                f"training.epochs={args.epochs}", f"output_dir={scratch}/out", "tracking.enabled=false", *args.set,
            ]
            config = load_config(REPO_ROOT / "experiments" / "quickstart.yaml", overrides=sets)
            result = run_experiment(config, show_progress=False)
            summary = result.summary
            rows.append((label, summary["i_auroc/final_mean"], summary["p_auroc/final_mean"], summary["aupro_30/final_mean"],
                         summary["i_auroc/fm"], sum(result.step_seconds), inference_images_per_second(config)))
            print(f"done: {label}", flush=True)
    header = f"{'run':<32}{'I-AUROC':>9}{'P-AUROC':>9}{'AUPRO30':>9}{'FM(I)':>8}{'train s':>9}{'img/s':>8}"
    print(header)
    print("-" * len(header))
    for label, i_auroc, p_auroc, aupro, fm, seconds, speed in rows:
        print(f"{label:<32}{i_auroc:>9.3f}{p_auroc:>9.3f}{aupro:>9.3f}{fm:>8.3f}{seconds:>9.0f}{speed:>8.1f}")
    print(f"peak resident memory of the whole benchmark: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")


if __name__ == "__main__":
    main()
