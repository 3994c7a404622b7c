"""Greedy k-center coreset: incad's pruned selection vs the plain greedy loop vs anomalib's ``KCenterGreedy``.

Features: PatchCore's Lite0 patch features (taps 4 and 10, 3x3 neighbourhood,
the defaults of ``learner: patchcore``) of the real cable_gland training images
(``mvtec3d_mini`` + ``mvtec3d_extra``: 80 images, 224 px -> 62,720 x 152), or
random features of that shape when the data is missing. For each method it
prints N, d, the ratio, the seconds of the selection alone and the coverage
radius (largest distance of a training feature to its nearest selected one) in
the ORIGINAL feature space, relative to the plain greedy loop's.

Rows: ``incad`` (exact greedy, lazy pruned; :mod:`incad.ops.coreset`),
``incad projected`` (the same in a ``--projection-dim`` random projection),
``plain greedy`` (every point updated for every pick, no projection, in torch:
the exact reference), and ``anomalib KCenterGreedy`` (its sparse random
projection, eps 0.9) when ``import anomalib`` works (install: ``pip install
anomalib==2.7.0 "pandas<3"``). The plain and anomalib loops take minutes on a
2-core CPU at the full size: ``--images 8`` for a quick check.

Run: ``python benchmarks/bench_coreset.py [--images N] [--ratio 0.1] [--skip-plain] [--skip-anomalib]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common import add_threads_option, start_benchmark

from incad.data.dataset import AnomalyDetectionDataset
from incad.data.sample import collate
from incad.learners.patchcore import PatchCoreOptions, PatchFeatures
from incad.models.backbones.registry import create_backbone
from incad.ops.coreset import coverage_radius, greedy_coreset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_ROOTS = (SHARED_DATA / "mvtec3d_mini", SHARED_DATA / "mvtec3d_extra")
CLASS_NAME = "cable_gland"
IMAGE_SIZE = 224
FALLBACK_SHAPE = (62_720, 152)


def real_features(max_images: int | None) -> tuple[torch.Tensor, str]:
    """(N, d) patch tokens of the real training images, as ``learner: patchcore`` computes them by default."""
    options = PatchCoreOptions()
    extractor = PatchFeatures(create_backbone(options.backbone, taps=options.taps), options.neighbourhood)
    tokens, count = [], 0
    for root in REAL_ROOTS:
        dataset = AnomalyDetectionDataset(root, [CLASS_NAME], "train", IMAGE_SIZE, {CLASS_NAME: 0}, load_xyz=False)
        indices = list(range(len(dataset)))
        if max_images is not None:
            indices = indices[: max(0, max_images - count)]
        for start in range(0, len(indices), 16):
            batch = collate([dataset[i] for i in indices[start : start + 16]])
            with torch.no_grad():
                maps = extractor.image_features(batch.image)
            tokens.append(maps.flatten(2).transpose(1, 2).reshape(-1, maps.shape[1]))
        count += len(indices)
    return torch.cat(tokens), f"Lite0 patch features of {count} real {CLASS_NAME} training images, {IMAGE_SIZE} px"


def load_features(max_images: int | None) -> tuple[torch.Tensor, str]:
    if all((root / CLASS_NAME / "train").is_dir() for root in REAL_ROOTS):
        return real_features(max_images)
    rows = FALLBACK_SHAPE[0] if max_images is None else max_images * 784
    features = torch.randn(rows, FALLBACK_SHAPE[1], generator=torch.Generator().manual_seed(0))
    return features, f"random features (real data not found under {SHARED_DATA})"


def anomalib_selection() -> Callable[[torch.Tensor, float], torch.Tensor] | None:
    """anomalib's ``KCenterGreedy`` as ``select(features, ratio) -> indices``, or None when anomalib is not installed."""
    try:
        from anomalib.models.components.sampling import KCenterGreedy
    except ImportError:
        return None

    def select(features: torch.Tensor, ratio: float) -> torch.Tensor:
        return torch.as_tensor(KCenterGreedy(embedding=features, sampling_ratio=ratio).select_coreset_idxs())

    return select


def timed(select: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    chosen = select()
    return chosen, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="use only the first N training images (default: all 80)")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-plain", action="store_true", help="skip the plain greedy loop (minutes at full size)")
    parser.add_argument("--skip-anomalib", action="store_true")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads)
    torch.manual_seed(args.seed)
    features, source = load_features(args.images)
    size = int(len(features) * args.ratio)
    print(f"features: {source}")
    print(f"N = {len(features)}, d = {features.shape[1]}, ratio = {args.ratio} -> {size} picks, torch threads = {torch.get_num_threads()}")
    rows: list[tuple[str, float, float]] = []

    def measure(name: str, select: Callable[[], torch.Tensor]) -> None:
        chosen, seconds = timed(select)
        rows.append((name, seconds, coverage_radius(features, features[chosen])))
        print(f"  {name}: {seconds:.2f} s", flush=True)

    measure("incad (exact, pruned)", lambda: greedy_coreset(features, size, None, args.seed))
    measure(f"incad projected to {args.projection_dim}", lambda: greedy_coreset(features, size, args.projection_dim, args.seed))
    if not args.skip_plain:
        measure("plain greedy (torch, exact)", lambda: greedy_coreset(features, size, None, args.seed, groups=0))
    select_anomalib = None if args.skip_anomalib else anomalib_selection()
    if select_anomalib is not None:
        measure("anomalib KCenterGreedy", lambda: select_anomalib(features, args.ratio))
    elif not args.skip_anomalib:
        print("  anomalib KCenterGreedy: skipped, `import anomalib` failed (pip install anomalib==2.7.0 'pandas<3')")
    reference = next((radius for name, _, radius in rows if name.startswith("plain")), rows[0][2])
    print(f"\n| method | seconds | coverage radius | vs plain greedy |\n|---|---|---|---|")
    for name, seconds, radius in rows:
        print(f"| {name} | {seconds:.2f} | {radius:.4f} | {radius / reference - 1:+.1%} |")


if __name__ == "__main__":
    main()
