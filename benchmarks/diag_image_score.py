"""Where the image score (max of the smoothed map) of normal images comes from, on a real class.

Trains one learner on one real MVTec 3D-AD class (preprocessing on, one step)
or loads its weights (``--weights``, a state dict this script dumped), then,
for two ways of fusing per-modality maps on the SAME weights:

- ``mean-token``: the scoring before the fix, every modality map divided by its
  mean over all training tokens, every token scored;
- ``current``: the learner's own ``anomaly_map`` (for ``ScaledModalityMaps``:
  tokens without 3-D points unscored, scale = mean image maximum);

prints the test I-AUROC / P-AUROC / AUPRO@0.3 / AUPRO@0.01 (report only) and,
on the VALIDATION normals (never the test set), where each map's maximum
lies: on pixels with or without a 3-D point, its distance to the object's
outline and to the image border, on the stride-16 grid's outer ring or not,
and which modality's scaled map wins there.

    python benchmarks/diag_image_score.py --learner ib_iumad --epochs 3 [--dump .cache/diag/ib.pt] [--set key=value ...]
    python benchmarks/diag_image_score.py --learner ib_iumad --weights .cache/diag/ib.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from common import REPO_ROOT, add_threads_option, start_benchmark

from incad.data.sample import Batch, collate
from incad.evaluation.postprocess import image_scores, upsample_and_smooth
from incad.learners.features import ScaledModalityMaps
from incad.metrics import image_auroc, pixel_metrics
from incad.learners import create_learner
from incad.resolve import load_run
from incad.runner import prepare_data, run_experiment

BASE_YAML = {
    "reconstruction": "experiments/quickstart.yaml",
    "ib_iumad": "experiments/ablations/table5_mamba-on_ibfm-on.yaml",
    "uni_rcm": "experiments/learners/uni_rcm.yaml",
    "cfm": "experiments/learners/cfm.yaml",
    "rlr": "experiments/learners/rlr.yaml",
}
# (B, M, h, w): the maps whose pixel-wise maximum over M is the fused anomaly map.
Scorer = Callable[[Batch], torch.Tensor]


def real_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"learner.name={args.learner}", "dataset.name=mvtec3d", f"dataset.root={args.root}", "dataset.preprocessing.enabled=true",
        f"dataset.image_size={args.image_size}", f"scenario.classes=[{args.class_name}]", "scenario.base=1", "scenario.increment=0",
        "scenario.steps=0", f"training.epochs={args.epochs}", "training.feature_cache=memory", "tracking.enabled=false",
        f"output_dir={REPO_ROOT / '.cache' / 'diag-out'}", *args.set,
    ]


def batches_of(dataset, size: int = 8):
    for start in range(0, len(dataset), size):
        yield collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])


@torch.no_grad()
def scorers(learner, train) -> dict[str, Scorer]:
    """The learner's own fused map and, for max-fused learners, the mean-token scaling used before."""
    if not isinstance(learner, ScaledModalityMaps):
        return {"current": lambda batch: learner.anomaly_map(batch)[:, None]}
    learner.calibrate(batches_of(train))
    totals, count = torch.zeros(len(learner.modalities)), 0
    for batch in batches_of(train):
        maps = learner.modality_maps(batch)
        totals += torch.stack([maps[m].sum() for m in learner.modalities])
        count += maps[learner.modalities[0]].numel()
    mean_token = totals / count

    def mean_token_scaled(batch: Batch) -> torch.Tensor:
        maps = learner.modality_maps(batch)
        return torch.stack([maps[m] / mean_token[i] for i, m in enumerate(learner.modalities)], dim=1)

    def current(batch: Batch) -> torch.Tensor:
        maps = learner.scored_modality_maps(batch)
        return torch.stack([maps[m] / learner.map_scale[i] for i, m in enumerate(learner.modalities)], dim=1)

    return {"mean-token": mean_token_scaled, "current": current}


@torch.no_grad()
def test_metrics(scorer: Scorer, test, sigma: float) -> dict[str, float]:
    maps, masks, labels = [], [], []
    for batch in batches_of(test):
        maps.append(upsample_and_smooth(scorer(batch).amax(dim=1), tuple(batch.mask.shape[-2:]), sigma))
        masks.append(batch.mask)
        labels.append(batch.label)
    maps, masks = torch.cat(maps), torch.cat(masks)
    return {"i_auroc": image_auroc(image_scores(maps), torch.cat(labels)), **pixel_metrics(maps, masks)}


@torch.no_grad()
def where_maxima_lie(scorer: Scorer, dataset, sigma: float) -> dict[str, np.ndarray]:
    """Per image: whether the argmax has a 3-D point, its distances to outline and border, the winning modality."""
    rows: dict[str, list] = {k: [] for k in ("on_valid", "outline_px", "border_px", "grid_ring", "winner")}
    for batch in batches_of(dataset):
        parts = scorer(batch)
        grid = parts.shape[-2:]
        maps = upsample_and_smooth(parts.amax(dim=1), tuple(batch.mask.shape[-2:]), sigma)
        for index in range(len(batch)):
            smoothed, valid = maps[index].numpy(), batch.valid[index].numpy()
            height, width = smoothed.shape
            y, x = np.unravel_index(smoothed.argmax(), smoothed.shape)
            inside = ndimage.distance_transform_edt(valid)  # a valid pixel's distance to the nearest pixel without a point
            outside = ndimage.distance_transform_edt(~valid)
            gy, gx = y * grid[0] // height, x * grid[1] // width
            rows["on_valid"].append(bool(valid[y, x]))
            rows["outline_px"].append(inside[y, x] if valid[y, x] else -outside[y, x])
            rows["border_px"].append(min(y, x, height - 1 - y, width - 1 - x))
            rows["grid_ring"].append(gy in (0, grid[0] - 1) or gx in (0, grid[1] - 1))
            rows["winner"].append(int(parts[index, :, gy, gx].argmax()) if parts.shape[1] > 1 else -1)
    return {k: np.asarray(v) for k, v in rows.items()}


def describe(figures: dict[str, np.ndarray], modalities: tuple[str, ...]) -> str:
    outline = figures["outline_px"]
    text = (
        f"argmax without a 3-D point {np.mean(~figures['on_valid']):.2f}; within 4 px of the outline {np.mean(np.abs(outline) <= 4):.2f} "
        f"(median signed distance {np.median(outline):.1f} px); within 16 px of the border {np.mean(figures['border_px'] < 16):.2f}; "
        f"on the grid's outer ring {np.mean(figures['grid_ring']):.2f}"
    )
    if (figures["winner"] >= 0).all():
        text += "; winning modality " + ", ".join(f"{m} {np.mean(figures['winner'] == i):.2f}" for i, m in enumerate(modalities))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learner", choices=sorted(BASE_YAML), required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--root", default=str(REPO_ROOT / "data" / "real"))
    parser.add_argument("--class-name", default="cable_gland")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--weights", type=Path, default=None, help="skip training: load this learner state dict")
    parser.add_argument("--dump", type=Path, default=None, help="write the trained learner's state dict here")
    add_threads_option(parser)
    args = parser.parse_args()
    start_benchmark(args.threads if args.threads is not None else 1)
    run = load_run(REPO_ROOT / BASE_YAML[args.learner], overrides=real_overrides(args))
    config = run.config
    if args.weights is None:
        learner = run_experiment(run, show_progress=False).learner
        if args.dump:
            torch.save(learner.state_dict(), args.dump)
    else:
        learner = create_learner(run, [args.class_name])
        learner.load_state_dict(torch.load(args.weights))
    learner.eval()
    prepared = prepare_data(config)
    dataset = config.dataset
    split = {
        name: prepared.split([args.class_name], name, {args.class_name: 0}, True, dataset.image_size, dataset.on_bad_sample)
        for name in ("train", "validation", "test")
    }
    sigma = config.evaluation.smoothing_sigma
    print(f"{args.learner}, {config.training.epochs} epochs, {args.class_name}; test figures are for reporting only")
    for name, scorer in scorers(learner, split["train"]).items():
        metrics = test_metrics(scorer, split["test"], sigma)
        print(f"  [{name}] test: " + " ".join(f"{key} {value:.3f}" for key, value in metrics.items()))
        print(f"  [{name}] validation normals: {describe(where_maxima_lie(scorer, split['validation'], sigma), learner.modalities)}")


if __name__ == "__main__":
    main()
