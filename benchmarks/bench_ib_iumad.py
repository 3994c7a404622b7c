"""IB-IUMAD vs the plain reconstruction learner, and the Table 5 ablation, in one run.

All runs use the quickstart scenario (5 synthetic classes, 3-1 with 2 steps,
rgb+depth, naive fine-tuning) with the same seed and 4 decoder layers (IBFM
fuses the states after layer 2 and the last one, as in the paper), the plain
learner included so every row has the same MRN. Per run: final mean I-AUROC /
P-AUROC / AUPRO@0.3 / AUPRO@0.01, FM of I-AUROC, training time and the peak
memory of the whole run; then, in a separate process, inference images/s
(rgb+depth, batch 16, 224x224, CPU, feature cache off) and the peak memory of
that inference alone. "train / plain" is a row's training time over the plain learner's (the
cost of the Mamba decoders and IBFM; the scan is about a seventh of it, the decoders' projections,
attention and copies the rest: see ``--profile``).

    .venv/bin/python benchmarks/bench_ib_iumad.py [--epochs 15] [--set dataset.image_size=128 ...]
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows plain ib_iumad --no-inference --epochs 2   # training time only, minutes
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows fusion_add fusion_concat_fc fusion_linear_glu --no-inference   # Table 6
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows plain ib_iumad --paired-steps 20 [--profile]   # step against step

Whole runs follow each other, so the machine's drift (15-30 % over minutes here) lands in
"train / plain". ``--paired-steps K`` measures that ratio instead as training steps in rounds of one
step per row on the same batch of 16 (rgb+depth, the scenario's image size, backbone features cached after the first
step, as in training), AdamW and gradient clipping as in the runs: the median of each round's
ratio, with its quartiles. ``--profile`` adds the operators whose time per step grew most over the
first row's (torch.profiler, self CPU time): where the extra time goes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from common import (
    QUICKSTART,
    add_threads_option,
    in_own_process,
    inference_figures,
    markdown_table,
    random_batch,
    run_figures,
    start_benchmark,
)
from torch.profiler import ProfilerActivity, profile

from incad.learners import Learner, create_learner
from incad.learners.terms import total_loss
from incad.resolve import load_run

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
    parser.add_argument("--paired-steps", type=int, metavar="K", help="time K rounds of one training step per row instead of whole runs")
    parser.add_argument("--profile", action="store_true", help="with --paired-steps: the operators that grew most over the first row")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    if args.paired_steps:
        paired_steps(args.rows, args.paired_steps, args.set, args.profile)
        return
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


class TrainingStep:
    """One training step of a row's learner as the runs take it: whole objective, AdamW, gradient clipping."""

    def __init__(self, row: str, overrides: list[str]) -> None:
        run = load_run(QUICKSTART, overrides=[f"{k}={v}" for k, v in RUNS[row][1].items()] + ["learner.decoder_layers=4", *overrides])
        training = run.config.training
        self.learner: Learner = create_learner(run, run.config.scenario.classes).train()
        trainable = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=training.lr, weight_decay=training.weight_decay)
        self.grad_clip = training.grad_clip
        self.image_size = run.config.dataset.image_size

    def __call__(self, batch) -> float:
        """Seconds of one step on ``batch``."""
        start = time.perf_counter()
        loss = total_loss(self.learner, self.learner(batch), batch)
        self.optimizer.zero_grad()
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.learner.parameters(), self.grad_clip)
        self.optimizer.step()
        return time.perf_counter() - start


def paired_steps(rows: list[str], rounds: int, overrides: list[str], with_profile: bool) -> None:
    """Seconds per step of every row and each row's ratio to the first, from rounds of one step per row."""
    torch.manual_seed(0)
    steps = {row: TrainingStep(row, overrides) for row in rows}
    image_size = steps[rows[0]].image_size
    batch = random_batch(image_size)
    batch.object_id = torch.arange(len(batch.label)) % 3  # the base step's three classes
    for step in steps.values():  # the first fills the feature cache, the second is warm
        for _ in range(2):
            step(batch)
    seconds: dict[str, list[float]] = {row: [] for row in rows}
    for _ in range(rounds):
        for row, step in steps.items():
            seconds[row].append(step(batch))
    first = rows[0]
    print(f"\n{rounds} rounds of one training step per row, batch 16, rgb+depth, {image_size} px, overrides {overrides or 'none'}\n")
    print(f"| row | s / step | / {first} (median of rounds) | quartiles |")
    print("|---|---|---|---|")
    for row in rows:
        ratios = [own / base for own, base in zip(seconds[row], seconds[first], strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4) if rounds > 1 else (ratios[0],) * 3
        print(f"| {RUNS[row][0]} | {statistics.median(seconds[row]):.3f} | {statistics.median(ratios):.2f} | {low:.2f}-{high:.2f} |")
    if with_profile:
        print_growth(steps, batch, first)


def print_growth(steps: dict[str, TrainingStep], batch, first: str, top: int = 15) -> None:
    """The operators whose self CPU time per step grew most over ``first``'s (3 profiled steps per row)."""
    per_step = {}
    for row, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            for _ in range(3):
                step(batch)
        per_step[row] = {event.key: event.self_cpu_time_total / 3e3 for event in trace.key_averages()}
    for row in steps:
        if row == first:
            continue
        growth = {op: ms - per_step[first].get(op, 0.0) for op, ms in per_step[row].items()}
        print(f"\n{RUNS[row][0]}: {sum(per_step[row].values()):.0f} ms of operators per step against {sum(per_step[first].values()):.0f}\n")
        print(f"| operator | ms / step | {first} ms / step | grown by ms |")
        print("|---|---|---|---|")
        for op in sorted(growth, key=growth.get, reverse=True)[:top]:
            print(f"| {op} | {per_step[row][op]:.1f} | {per_step[first].get(op, 0.0):.1f} | {growth[op]:.1f} |")


if __name__ == "__main__":
    main()
