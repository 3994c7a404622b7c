"""RLR, CFM, Uni-RCM, text-guided, the plain reconstruction learner and IB-IUMAD under naive fine-tuning, in one run.

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
import tempfile
from pathlib import Path

from common import QUICKSTART, REPO_ROOT, add_threads_option, in_own_process, markdown_table, run_figures, start_benchmark

LEARNERS = ("rlr", "cfm", "uni_rcm", "text_guided", "reconstruction", "ib_iumad")
QUICKSTART_LEARNERS = {"reconstruction", "ib_iumad"}
# IBFM fuses the MRN states after decoder layer 2 and after the last one: the quickstart's 2 layers cannot express that.
LEARNER_OVERRIDES = {"ib_iumad": ["learner.decoder_layers=4"]}
COLUMNS = {
    "i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "aupro_30": "AUPRO@0.3", "aupro_1": "AUPRO@0.01", "fm": "FM (I-AUROC)",
    "train_s": "train s", "images_per_s": "images/s", "peak_gib": "peak GiB",
}


def scenario_file(learner: str) -> Path:
    if learner in QUICKSTART_LEARNERS:
        return QUICKSTART
    return REPO_ROOT / "experiments" / "learners" / f"{learner}.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--learners", default=",".join(LEARNERS), help=f"comma-separated, from {', '.join(LEARNERS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    learners = [name.strip() for name in args.learners.split(",") if name.strip()]
    unknown = sorted(set(learners) - set(LEARNERS))
    if unknown:
        parser.error(f"unknown learners {unknown}; choose from {', '.join(LEARNERS)}")
    rows = {}
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
            rows[learner] = in_own_process(run_figures, scenario_file(learner), [f"learner.name={learner}", *LEARNER_OVERRIDES.get(learner, []), *overrides])
            print(f"done: {learner}", flush=True)
    print(f"\nquickstart scenario, naive, {args.epochs} epochs, {args.image_size} px\n")
    print(markdown_table(COLUMNS, rows, "learner"))


if __name__ == "__main__":
    main()
