"""CPU throughput of EfficientNet-Lite0 feature extraction (224x224, batch 16).

Feature extraction runs on every training and test image, so its speed bounds
how fast a CPU-only run can go. Run: ``python benchmarks/bench_backbone.py``.
"""

from __future__ import annotations

import argparse
import time

import torch

from incad.models.backbones.efficientnet import build_backbone


def images_per_second(batch_size: int, size: int, repeats: int, warmup: int) -> float:
    """Mean rate over ``repeats`` timed batches, after ``warmup`` untimed ones (first calls allocate)."""
    backbone = build_backbone("efficientnet-lite0")
    images = torch.rand(batch_size, 3, size, size)
    with torch.inference_mode():
        for _ in range(warmup):
            backbone.forward_aligned(images)
        start = time.perf_counter()
        for _ in range(repeats):
            backbone.forward_aligned(images)
        elapsed = time.perf_counter() - start
    return batch_size * repeats / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    rate = images_per_second(args.batch_size, args.size, args.repeats, args.warmup)
    print(
        f"efficientnet-lite0 features (aligned, stride 16): {rate:.1f} images/s "
        f"on CPU, {args.size}x{args.size}, batch {args.batch_size}, "
        f"torch {torch.__version__}, torch.get_num_threads()={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
