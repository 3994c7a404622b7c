"""CPU time of the selective scans: the fused numba kernel, the token-by-token loop and the chunked scan.

Rows: first the shape issue 15 named as the Mamba decoder's at 224 px (batch 16, dim 256, L 196,
N 16, one group of B/C); then the shapes the decoder really passes at 224 px, where ES2D stacks
its four directions on the channels of one call (14x14 tokens: four 7x7 sub-grids, L 49, dim
4 x d_inner, four groups of B/C) with the quickstart's hidden_dim 128 and the paper YAMLs' 256;
then longer sequences up to L 3136 (56x56 tokens), each forward only and forward+backward, at every
thread count of ``--threads`` (default 1 and 2). Forward+backward is the output and every
input's gradient for a fixed dense upstream gradient (``torch.autograd.grad``), as inside a
model: nothing accumulates into the inputs' ``.grad``, whose additions are not the scan's. After one warm-up call of each scan (which also
loads or compiles the numba kernel), the scans run in rounds of one call each until ``--repeats``
rounds or ``--budget-s`` seconds; the seconds are medians over the rounds, the ratios medians of
each round's ratio (paired in time, so the machine's drift cancels). float32, Mamba's scales (see
``mamba_like_inputs``).

    .venv/bin/python benchmarks/bench_selective_scan.py [--threads 1 2] [--lengths 196 784 3136] [--budget-s 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import torch
from common import add_threads_option, start_benchmark

from incad.models.layers.mamba import ES2D_STRIDE, ESSM, NUM_DIRECTIONS
from incad.ops import selective_scan, selective_scan_reference

ISSUE_SHAPE = (16, 256, 196, 16, 1)  # batch, dim, L, N, groups: issue 15's estimate of the decoder at 224 px
DECODER_GRID = 14  # tokens per side at 224 px (the backbone's stride 16)
DECODER_SHAPES = tuple(  # what ESSM passes for the quickstart's hidden_dim 128 and the paper YAMLs' 256
    (16, NUM_DIRECTIONS * ESSM(hidden).d_inner, (DECODER_GRID // ES2D_STRIDE) ** 2, 16, NUM_DIRECTIONS) for hidden in (128, 256)
)
LONG_LENGTHS = (784, 3136)  # 28x28 and 56x56 token grids
SCANS: dict[str, Callable[..., torch.Tensor]] = {
    "fused": lambda **inputs: selective_scan(**inputs, cpu_scan="fused"),
    "token loop": selective_scan_reference,
    "chunked": lambda **inputs: selective_scan(**inputs, cpu_scan="chunked"),
}


def mamba_like_inputs(batch: int, dim: int, state_size: int, length: int, groups: int = 1) -> dict:
    """float32 inputs with Mamba's scales: S4D-real A, softplus(delta + bias) around 0.01, ``groups`` groups of B/C."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int, requires_grad: bool = True) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)

    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length),
        "A": -torch.arange(1, state_size + 1, dtype=torch.float32).repeat(dim, 1).requires_grad_(),
        "B": randn(batch, groups, state_size, length),
        "C": randn(batch, groups, state_size, length),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": torch.full((dim,), -4.6, requires_grad=True),  # softplus(-4.6) ~ 0.01
        "delta_softplus": True,
    }


def paired_seconds(inputs: dict, backward: bool, repeats: int, budget_s: float) -> dict[str, list[float]]:
    """Seconds per call of every scan, in rounds of one call each, after one warm-up call each.

    The rounds pair the scans in time: this machine's speed drifts by 15-30 % over minutes, so a ratio
    is taken within a round (one call of each, back to back) and its median over the rounds reported.
    """

    differentiable = [value for value in inputs.values() if isinstance(value, torch.Tensor) and value.requires_grad]
    upstream = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))

    def call(scan: Callable[..., torch.Tensor]) -> None:
        if backward:  # the gradients alone, as inside a model: no accumulation into leaf .grad, a dense upstream gradient
            torch.autograd.grad(scan(**inputs), differentiable, grad_outputs=upstream)
        else:
            with torch.no_grad():
                scan(**inputs)

    for scan in SCANS.values():
        call(scan)
    timings: dict[str, list[float]] = {name: [] for name in SCANS}
    while len(timings["fused"]) < repeats and sum(map(sum, timings.values())) < budget_s:
        for name, scan in SCANS.items():
            start = time.perf_counter()
            call(scan)
            timings[name].append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_threads_option(parser, several=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=5.0, help="stop repeating a measurement after this long")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LONG_LENGTHS), help="L of the rows after the decoder's")
    parser.add_argument("--long-shape", type=int, nargs=2, default=[2, 64], metavar=("BATCH", "DIM"), help="batch and dim of the longer rows (N 16)")
    args = parser.parse_args()
    start_benchmark(args.threads[0])
    shapes = [ISSUE_SHAPE, *DECODER_SHAPES, *((*args.long_shape, length, 16, 1) for length in args.lengths)]
    print("\nmedian seconds per call, float32; x = median over rounds of token loop (or chunked) time / fused time\n")
    print("| threads | batch, dim, L, N, groups | pass | fused s | token loop s | chunked s | loop / fused | chunked / fused |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in shapes:
            batch, dim, length, state_size, groups = shape
            inputs = mamba_like_inputs(batch, dim, state_size, length, groups)
            for backward in (False, True):
                timings = paired_seconds(inputs, backward, args.repeats, args.budget_s)
                fused, loop, chunked = (statistics.median(timings[name]) for name in ("fused", "token loop", "chunked"))
                loop_ratio, chunked_ratio = (
                    statistics.median(other / own for other, own in zip(timings[name], timings["fused"], strict=True))
                    for name in ("token loop", "chunked")
                )
                pass_name = "forward+backward" if backward else "forward"
                print(
                    f"| {threads} | {', '.join(map(str, shape))} | {pass_name} | {fused:.4f} | {loop:.4f} | {chunked:.4f} "
                    f"| {loop_ratio:.1f}x | {chunked_ratio:.1f}x |",
                    flush=True,
                )
    print(f"\nnumba threading layer of the fused scan: {numba.threading_layer()}")


if __name__ == "__main__":
    main()
