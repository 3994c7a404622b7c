"""RLR, CFM, Uni-RCM, the plain reconstruction learner and IB-IUMAD under naive fine-tuning, in one run.

Every learner runs the quickstart scenario (5 synthetic classes, 3-1 with 2
steps, rgb+depth, same seed): ``experiments/quickstart.yaml`` for
``reconstruction`` and ``ib_iumad``, ``experiments/learners/<name>.yaml`` for
the others. Each learner runs in its own process, so its peak resident memory
(data, feature cache, training, evaluation) is its own. The table gives final
mean I-AUROC / P-AUROC / AUPRO@0.3 / AUPRO@0.01, FM of I-AUROC, training time
(offline fits, epochs and calibration of all steps), inference images/s of
the trained learner (batch 16, feature caches off) and peak memory.

    .venv/bin/python benchmarks/bench_learners.py [--epochs 15] [--image-size 224] [--learners rlr,cfm]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
from pathlib import Path

from bench_ib_iumad import learner_images_per_second

from incad.config import load_config
from incad.runner import run_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]
LEARNERS = ("rlr", "cfm", "uni_rcm", "reconstruction", "ib_iumad")
QUICKSTART_LEARNERS = {"reconstruction", "ib_iumad"}


def scenario_file(learner: str) -> Path:
    if learner in QUICKSTART_LEARNERS:
        return REPO_ROOT / "experiments" / "quickstart.yaml"
    return REPO_ROOT / "experiments" / "learners" / f"{learner}.yaml"


def run_one(learner: str, overrides: list[str]) -> dict[str, float]:
    """One learner's whole run (in a child process): its figures for the table."""
    config = load_config(scenario_file(learner), overrides=[f"learner.name={learner}", *overrides])
    result = run_experiment(config, show_progress=False)
    summary = result.summary
    return {
        "i_auroc": summary["i_auroc/final_mean"],
        "p_auroc": summary["p_auroc/final_mean"],
        "aupro_30": summary["aupro_30/final_mean"],
        "aupro_1": summary["aupro_1/final_mean"],
        "fm": summary["i_auroc/fm"],
        "train_s": sum(result.step_seconds),
        "images_per_s": learner_images_per_second(result.learner, config.dataset.image_size),
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--learners", default=",".join(LEARNERS), help=f"comma-separated, from {', '.join(LEARNERS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    args = parser.parse_args()
    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    unknown = sorted(set(learners) - set(LEARNERS))
    if unknown:
        parser.error(f"unknown learners {unknown}; choose from {', '.join(LEARNERS)}")
    rows = {}
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="incad-bench-") as scratch:
        overrides = [
            f"training.epochs={args.epochs}",
            f"dataset.image_size={args.image_size}",
            f"dataset.synthetic.image_size={args.image_size}",
            f"output_dir={scratch}/out",
            "tracking.enabled=false",
            *args.set,
        ]
        for learner in learners:
            with context.Pool(1) as pool:
                rows[learner] = pool.apply(run_one, (learner, overrides))
            print(f"done: {learner}", flush=True)
    print(f"\nquickstart scenario, naive, {args.epochs} epochs, {args.image_size} px\n")
    print("| learner | I-AUROC | P-AUROC | AUPRO@0.3 | AUPRO@0.01 | FM (I-AUROC) | train s | images/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for learner, row in rows.items():
        print(
            f"| {learner} | {row['i_auroc']:.3f} | {row['p_auroc']:.3f} | {row['aupro_30']:.3f} | {row['aupro_1']:.3f} "
            f"| {row['fm']:.3f} | {row['train_s']:.0f} | {row['images_per_s']:.1f} | {row['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
