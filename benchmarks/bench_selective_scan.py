"""CPU time of the chunked selective scan against the token-by-token recurrence.

The chunked scan exists so Mamba decoders run without CUDA; this shows what it costs
against the plain loop it replaces (batch 2, dim 64, N 16, where the loop is feasible)
and at training size (batch 16, dim 256, N 16), with peak memory.
Run: ``python benchmarks/bench_selective_scan.py [--threads 1] [--chunk-size 8]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import time

import torch

from incad.ops import selective_scan, selective_scan_reference

LENGTHS = (196, 784, 3136)  # 14x14, 28x28, 56x56 token grids
SCANS = {"chunked": selective_scan, "reference": selective_scan_reference}


def mamba_like_inputs(batch: int, dim: int, state_size: int, length: int) -> dict:
    """float32 inputs with Mamba's scales: S4D-real A, softplus(delta + bias) around 0.01, grouped B/C."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int, requires_grad: bool = True) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)

    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length),
        "A": -torch.arange(1, state_size + 1, dtype=torch.float32).repeat(dim, 1).requires_grad_(),
        "B": randn(batch, state_size, length),
        "C": randn(batch, state_size, length),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": torch.full((dim,), -4.6, requires_grad=True),  # softplus(-4.6) ~ 0.01
        "delta_softplus": True,
    }


def run_once(scan_name: str, inputs: dict, backward: bool, chunk_size: int | None) -> None:
    kwargs = {"chunk_size": chunk_size} if scan_name == "chunked" and chunk_size else {}
    if backward:
        SCANS[scan_name](**inputs, **kwargs).sum().backward()
    else:
        with torch.no_grad():
            SCANS[scan_name](**inputs, **kwargs)


def measure(
    scan_name: str,
    shape: tuple[int, int, int, int],
    backward: bool,
    chunk_size: int | None,
    threads: int,
    repeats: int,
    budget_s: float,
) -> tuple[float, float]:
    """Median seconds per call after the first (unless that one spent the budget) and peak extra MiB.

    Runs in a fresh process (see ``main``) so the process's peak resident set is this
    measurement's own: torch has no CPU allocator statistics.
    """
    torch.set_num_threads(threads)
    inputs = mamba_like_inputs(*shape)
    resident_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timings = []
    while len(timings) <= repeats and sum(timings) < budget_s:
        start = time.perf_counter()
        run_once(scan_name, inputs, backward, chunk_size)
        timings.append(time.perf_counter() - start)
    peak_extra_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - resident_before_kib) / 1024
    # The first call pays one-off allocations; drop it when there are others.
    return statistics.median(timings[1:] or timings), peak_extra_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--chunk-size", type=int, default=None, help="default: selective_scan's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=20.0, help="stop repeating a measurement after this long")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    args = parser.parse_args()
    settings = (args.chunk_size, args.threads, args.repeats, args.budget_s)
    chunk = args.chunk_size or "default"
    print(f"torch {torch.__version__}, {args.threads} threads, chunk_size {chunk}, float32, median seconds per call")
    # A fixed mmap threshold in the measuring processes: with glibc's dynamic one, freed chunk
    # tensors stay in a fragmented heap and the peak resident set grows with L (up to 2x here),
    # which measures the allocator, not the scan. Spawned processes read it at start.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)

    def in_fresh_process(scan_name: str, shape: tuple[int, int, int, int], backward: bool) -> tuple[float, float]:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(measure, scan_name, shape, backward, *settings).result()

    print("\nbatch 2, dim 64, N 16 (xR: chunked time / reference time)")
    print("           forward: chunked / reference        forward+backward: chunked / reference")
    for length in args.lengths:
        shape = (2, 64, 16, length)
        row = [
            in_fresh_process(name, shape, backward)[0] for backward in (False, True) for name in ("chunked", "reference")
        ]
        print(
            f"L {length:5d}  {row[0]:20.3f} / {row[1]:.3f} (x{row[0] / row[1]:.1f})"
            f"      {row[2]:20.3f} / {row[3]:.3f} (x{row[2] / row[3]:.1f})"
        )
    print("\nbatch 16, dim 256, N 16, chunked only   forward (peak MiB)   forward+backward (peak MiB)")
    for length in args.lengths:
        shape = (16, 256, 16, length)
        (forward_s, forward_mib), (train_s, train_mib) = (in_fresh_process("chunked", shape, b) for b in (False, True))
        print(f"L {length:5d}  {forward_s:24.2f} ({forward_mib:6.0f})   {train_s:14.2f} ({train_mib:6.0f})")


if __name__ == "__main__":
    main()
