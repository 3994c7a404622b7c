"""IB-IUMAD vs the plain reconstruction learner, and the Table 5 ablation, in one run.

All runs use the quickstart scenario (5 synthetic classes, 3-1 with 2 steps,
rgb+depth, naive fine-tuning) with the same seed and 4 decoder layers (IBFM
fuses the states after layer 2 and the last one, as in the paper), the plain
learner included so every row has the same MRN. Per run: final mean I-AUROC /
P-AUROC / AUPRO@0.3 / AUPRO@0.01, FM of I-AUROC, training time and the peak
memory of the whole run; then, in a separate process, inference images/s
(rgb+depth, batch 16, 224x224, CPU, feature cache off) and the peak memory of
that inference alone. "train / plain" is a row's training time over the plain learner's (the
cost of the Mamba decoders and IBFM; the scan is about a fifth of it, the decoders' projections,
attention and copies the rest: see ``--profile`` and ``--floor``).

    .venv/bin/python benchmarks/bench_ib_iumad.py [--epochs 15] [--set dataset.image_size=128 ...]
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows plain ib_iumad --no-inference --epochs 2   # training time only, minutes
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows fusion_add fusion_concat_fc fusion_linear_glu --no-inference   # Table 6
    .venv/bin/python benchmarks/bench_ib_iumad.py --rows plain ib_iumad --paired-steps 20 [--profile]   # step against step

Whole runs follow each other, so the machine's drift (15-30 % over minutes here) lands in
"train / plain". ``--paired-steps K`` measures that ratio instead as training steps in rounds of one
step per row on the same batch of 16 (rgb+depth, the scenario's image size, backbone features cached after the first
step, as in training), AdamW and gradient clipping as in the runs: the median of each round's
ratio, with its quartiles. ``--profile`` adds the operators whose time per step grew most over the
first row's (torch.profiler, self CPU time): where the extra time goes. ``--floor`` adds, for each row
with Mamba decoders, what their own arithmetic costs per step, forward+backward on the same shapes:
the matrix products of their linear layers, their self-attention (``scaled_dot_product_attention``)
and their ES2D scan calls (per-direction projections + fused scan), timed alone, times the number of
decoder blocks, with the rate of the matrix products against a large one's: (first row's step + these
parts) / first row's step is the ratio if everything else in the decoders (norms, convolutions,
activations, data movement) and IBFM were free.

    .venv/bin/python benchmarks/bench_ib_iumad.py --rows plain ib_iumad --paired-steps 10 --floor
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
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
from incad.models.layers.mamba import ES2D_STRIDE, NUM_DIRECTIONS
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
    parser.add_argument("--floor", action="store_true", help="with --paired-steps: the Mamba decoders' arithmetic alone, per step")
    add_threads_option(parser)
    args = parser.parse_args()
    if (args.profile or args.floor) and not args.paired_steps:
        parser.error("--profile and --floor measure training steps: give --paired-steps K as well")
    start_benchmark(args.threads)
    if args.paired_steps:
        paired_steps(args.rows, args.paired_steps, args.set, args.profile, args.floor)
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


def paired_steps(rows: list[str], rounds: int, overrides: list[str], with_profile: bool, with_floor: bool) -> None:
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
    if with_floor:
        first_seconds = statistics.median(seconds[first])
        for row in rows:
            if hasattr(steps[row].learner, "mamba_decoders"):
                print_decoder_floor(RUNS[row][0], steps[row].learner, first, first_seconds, statistics.median(seconds[row]))


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


def median_seconds(call, repeats: int, warm_up: int = 2) -> float:
    """Median wall time of ``call()`` over ``repeats`` calls after ``warm_up`` untimed ones."""
    times = []
    for repeat in range(warm_up + repeats):
        start = time.perf_counter()
        call()
        if repeat >= warm_up:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def gradients(function, leaves: list[torch.Tensor], upstream: list[torch.Tensor]) -> None:
    """Forward and backward of ``function(*leaves)`` for a dense upstream gradient, as inside a model."""
    torch.autograd.grad(function(*leaves), leaves, grad_outputs=upstream)


def print_decoder_floor(label: str, learner: Learner, first: str, first_seconds: float, row_seconds: float, repeats: int = 10) -> None:
    """The Mamba decoders' matrix products, attention and scan calls alone, forward+backward, per training step."""
    blocks = [block for decoder in learner.mamba_decoders.values() for block in decoder.blocks]
    block, batch = blocks[0], 16  # every block has the same shapes
    essm, attention = block.essm, block.attention
    tokens, dim, inner, heads = math.prod(block.grid_size), essm.out_proj.out_features, essm.d_inner, attention.num_heads

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape).requires_grad_()

    def copy(weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().clone().requires_grad_()

    linear_weights = [copy(w) for w in (essm.in_proj.weight, essm.out_proj.weight, attention.in_proj_weight, attention.out_proj.weight)]
    products = "matrix products of the linear layers (ESSM in/out, attention in/out)"
    parts = {  # name: (function of the leaves, leaves), differentiated with respect to all its leaves
        products: (
            lambda x, y, w1, w2, w3, w4: (F.linear(x, w1), F.linear(y, w2), F.linear(x, w3), F.linear(x, w4)),
            [leaf(batch, tokens, dim), leaf(batch, tokens, inner), *linear_weights],
        ),
        "self-attention (scaled_dot_product_attention)": (
            lambda q, k, v: (F.scaled_dot_product_attention(q, k, v),),
            [leaf(batch, heads, tokens, dim // heads) for _ in range(3)],
        ),
        "ES2D scan call (per-direction projections + fused scan)": (
            lambda sequences: (essm.scan_directions(sequences),),
            [leaf(batch, NUM_DIRECTIONS * inner, math.prod(-(-side // ES2D_STRIDE) for side in block.grid_size))],
        ),
    }
    print(f"\n{label}: the arithmetic of its {len(blocks)} Mamba decoder blocks alone, forward+backward, batch {batch}\n")
    print("| part | ms per block | ms per step |")
    print("|---|---|---|")
    per_block = {}
    for name, (function, leaves) in parts.items():
        upstream = [torch.randn_like(output) for output in function(*leaves)]
        per_block[name] = median_seconds(functools.partial(gradients, function, leaves, upstream), repeats)
        print(f"| {name} | {per_block[name] * 1e3:.1f} | {per_block[name] * len(blocks) * 1e3:.0f} |")
    total = sum(per_block.values()) * len(blocks)
    print(f"| sum | | {total * 1e3:.0f} |")
    linear_flops = 6 * batch * tokens * sum(weight.numel() for weight in linear_weights)  # per token and weight: forward 2, backward 4
    square = torch.randn(2048, 2048)
    square_rate = 2 * 2048**3 / median_seconds(lambda: square @ square, repeats) / 1e9
    print(
        f"\nThe linear layers' products run at {linear_flops / per_block[products] / 1e9:.0f} GFLOP/s, "
        f"a 2048x2048 product at {square_rate:.0f} GFLOP/s here. {first}: {first_seconds:.3f} s per step; {label}: "
        f"{row_seconds:.3f} s ({row_seconds / first_seconds:.2f}x). {first}'s step plus these parts alone: "
        f"{(first_seconds + total) / first_seconds:.2f}x, the ratio if everything else in the decoders and IBFM were free.",
        flush=True,
    )


if __name__ == "__main__":
    main()
