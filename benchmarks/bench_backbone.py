"""CPU throughput of EfficientNet-Lite0 feature extraction (224x224, batch 16).

Feature extraction runs on every training and test image, so its speed bounds
how fast a CPU-only run can go. Run: ``python benchmarks/bench_backbone.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import add_threads_option, start_benchmark

from incad.models.backbones.registry import create_backbone


def batch_seconds(batch_size: int, size: int, repeats: int, warmup: int) -> list[float]:
    """Seconds per batch for ``repeats`` timed batches, after ``warmup`` untimed ones (first calls allocate)."""
    backbone = create_backbone("efficientnet-lite0")
    images = torch.rand(batch_size, 3, size, size)
    timings = []
    with torch.inference_mode():
        for _ in range(warmup):
            backbone.forward_aligned(images)
        for _ in range(repeats):
            start = time.perf_counter()
            backbone.forward_aligned(images)
            timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    timings = batch_seconds(args.batch_size, args.size, args.repeats, args.warmup)
    # The median resists other load on a shared machine; the best batch shows the ceiling.
    print(
        f"efficientnet-lite0 features (aligned, stride 16) on CPU, {args.size}x{args.size}, "
        f"batch {args.batch_size}: {args.batch_size / statistics.median(timings):.1f} images/s median, "
        f"{args.batch_size / min(timings):.1f} best batch; "
        f"torch {torch.__version__}, torch.get_num_threads()={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
