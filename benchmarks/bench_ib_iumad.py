"""IB-IUMAD vs the plain reconstruction learner, and the Table 5 ablation, in one run.

All runs use the quickstart scenario (5 synthetic classes, 3-1 with 2 steps,
rgb+depth, naive fine-tuning) with the same seed and 4 decoder layers (IBFM
fuses the states after layer 2 and the last one, as in the paper), the plain
learner included so every row has the same MRN. Per run: final mean I-AUROC /
P-AUROC / AUPRO@0.3 / AUPRO@0.01, FM of I-AUROC, training time and the peak
memory of the whole run; then, in a separate process, inference images/s
(rgb+depth, batch 16, 224x224, CPU, feature cache off) and the peak memory of
that inference alone. "train / plain" is a row's training time over the plain learner's (the
cost of the Mamba decoders and IBFM; on CPU mostly the selective scan).

    .venv/bin/python benchmarks/bench_ib_iumad.py [--epochs 15] [--set dataset.image_size=128 ...]
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows plain ib_iumad --no-inference --epochs 2   # training time only, minutes
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows fusion_add fusion_concat_fc fusion_linear_glu --no-inference   # Table 6
"""

from __future__ import annotations

import argparse
import tempfile

from common import QUICKSTART, add_threads_option, in_own_process, inference_figures, markdown_table, run_figures, start_benchmark

RUNS = {  # --rows name: (label, overrides)
    "plain": ("reconstruction (plain)", {"learner.name": "reconstruction"}),
    "ib_iumad": ("IB-IUMAD (Mamba on, IBFM on)", {"learner.name": "ib_iumad"}),
    "no_ibfm": ("Mamba on, IBFM off", {"learner.name": "ib_iumad", "learner.ibfm": False}),
    "no_mamba": ("Mamba off, IBFM on", {"learner.name": "ib_iumad", "learner.mamba": False}),
    "neither": ("Mamba off, IBFM off", {"learner.name": "ib_iumad", "learner.mamba": False, "learner.ibfm": False}),
    # Table 6: IBFM's fusion operator (the ib_iumad row is cross_attention, the default).
    "fusion_add": ("IBFM fusion add", {"learner.name": "ib_iumad", "learner.fusion": "add"}),
    "fusion_concat_fc": ("IBFM fusion concat_fc", {"learner.name": "ib_iumad", "learner.fusion": "concat_fc"}),
    "fusion_linear_glu": ("IBFM fusion linear_glu", {"learner.name": "ib_iumad", "learner.fusion": "linear_glu"}),
}
COLUMNS = {
    "i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "aupro_30": "AUPRO@0.3", "aupro_1": "AUPRO@0.01", "fm": "FM (I-AUROC)",
    "train_s": "train s", "train_ratio": "train / plain", "peak_gib": "run peak GiB",
    "infer_images_per_s": "images/s @224", "infer_peak_gib": "inference peak GiB",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run, e.g. dataset.image_size=128")
    parser.add_argument("--rows", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs (default: all)")
    parser.add_argument("--no-inference", action="store_true", help="skip the inference speed and memory columns")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="incad-bench-") as scratch:
        for name in args.rows:
            label, run = RUNS[name]
            overrides = [f"{k}={v}" for k, v in run.items()] + [
                "learner.decoder_layers=4", f"training.epochs={args.epochs}", f"output_dir={scratch}/out", "tracking.enabled=false", *args.set,
            ]
            rows[label] = in_own_process(run_figures, QUICKSTART, overrides)
            if not args.no_inference:
                inference = in_own_process(inference_figures, QUICKSTART, overrides, 224)
                rows[label].update(infer_images_per_s=inference["images_per_s"], infer_peak_gib=inference["peak_gib"])
            print(f"done: {label} ({rows[label]['train_s']:.1f} s training)", flush=True)
    plain = rows.get(RUNS["plain"][0])
    for row in rows.values():
        row["train_ratio"] = row["train_s"] / plain["train_s"] if plain else None
    print(f"\nquickstart scenario, naive, {args.epochs} epochs, overrides {args.set or 'none'}\n")
    print(markdown_table(COLUMNS, rows, "run"))


if __name__ == "__main__":
    main()
