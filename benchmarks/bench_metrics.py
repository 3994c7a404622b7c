"""Time and peak memory of the pixel metrics on one MVTec-sized test set.

200 maps of 224x224 (about a class's test split), a third of them defect-free
and the rest with 1-3 elliptic defects of very different sizes, so the
connected-component labelling and the 10-million-pixel sort both do real work.
Compares the old way (``pixel_auroc`` and ``aupro`` at 0.3 and 0.01, three
calls and three sorts) with ``pixel_metrics`` (one sort for all three).

Run from the repository root: ``python -m benchmarks.bench_metrics``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from common import add_threads_option, start_benchmark

from incad.metrics import aupro, pixel_auroc, pixel_metrics

NUM_IMAGES = 200
SIZE = 224
REPEATS = 3


def blob_masks(rng: np.random.Generator) -> np.ndarray:
    """Elliptic defects with semi-axes of 2 to 40 pixels; one image in three is defect-free."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    masks = np.zeros((NUM_IMAGES, SIZE, SIZE), dtype=bool)
    for mask in masks[NUM_IMAGES // 3 :]:
        for _ in range(rng.integers(1, 4)):
            center_row, center_col = rng.integers(0, SIZE, size=2)
            half_height, half_width = rng.uniform(2, 40, size=2)
            mask |= ((rows - center_row) / half_height) ** 2 + ((cols - center_col) / half_width) ** 2 <= 1
    return masks


def anomaly_maps(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Smooth noise plus a weaker-than-perfect response on the defects, like a real model's map."""
    noise = ndimage.gaussian_filter(rng.standard_normal(masks.shape, dtype=np.float32), sigma=(0, 4, 4))
    response = ndimage.gaussian_filter(masks.astype(np.float32), sigma=(0, 4, 4))
    return noise / noise.std() + 2.0 * response


def measure(name: str, compute: Callable[[], Any]) -> tuple[Any, float]:
    """Print the best of REPEATS wall times and the peak numpy/Python allocation; return value and time."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        value = compute()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    compute()
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:<34} best {min(times):6.3f} s   peak memory {peak_bytes / 2**20:6.0f} MiB")
    return value, min(times)


def old_style(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Three separate calls, as evaluate_object did before pixel_metrics: three sorts."""
    return {
        "p_auroc": pixel_auroc(maps, masks),
        "aupro@0.3": aupro(maps, masks, fpr_limit=0.3),
        "aupro@0.01": aupro(maps, masks, fpr_limit=0.01),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_threads_option(parser)
    start_benchmark(parser.parse_args().threads)
    rng = np.random.default_rng(0)
    masks = blob_masks(rng)
    maps = anomaly_maps(rng, masks)
    print(f"{NUM_IMAGES} maps of {SIZE}x{SIZE} float32, {masks.mean():.2%} defect pixels, best of {REPEATS}")
    measure("pixel_auroc", lambda: pixel_auroc(maps, masks))
    measure("aupro@0.3", lambda: aupro(maps, masks, fpr_limit=0.3))
    measure("aupro@0.01", lambda: aupro(maps, masks, fpr_limit=0.01))
    old, old_time = measure("old style (3 calls)", lambda: old_style(maps, masks))
    new, new_time = measure("pixel_metrics (1 sort)", lambda: pixel_metrics(maps, masks))
    maps64 = maps.astype(np.float64)
    measure("pixel_metrics, float64 maps", lambda: pixel_metrics(maps64, masks))
    for key in new:
        print(f"  {key:<11} old {old[key]:.6f}   pixel_metrics {new[key]:.6f}")
    print(f"pixel_metrics speed-up over the old style: {old_time / new_time:.1f}x")


if __name__ == "__main__":
    main()
