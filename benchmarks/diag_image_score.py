"""Where the image score (max of the smoothed map) of normal images comes from, on a real class.

Trains one learner on one real MVTec 3D-AD class (preprocessing on, one step),
reports the test I-AUROC / P-AUROC / AUPRO@0.3 / AUPRO@0.01 of the run, and
then, on the VALIDATION normals (never the test set), where each map's maximum
lies: on pixels with or without a 3-D point, its distance to the object's
outline and to the image border, on the stride-16 grid's outer ring or not,
and which modality's scaled map wins there (learners that fuse per-modality
maps by their maximum). The per-image figures go to ``--dump`` for further
analysis.

    python benchmarks/diag_image_score.py --learner ib_iumad --epochs 3 [--root data/real] [--set key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from common import REPO_ROOT

from incad.config import load_config
from incad.data.datasets import split_dataset
from incad.data.sample import collate
from incad.evaluation.postprocess import upsample_and_smooth
from incad.learners.features import ScaledModalityMaps
from incad.runner import prepare_data, run_experiment

BASE_YAML = {
    "reconstruction": "experiments/quickstart.yaml",
    "ib_iumad": "experiments/ablations/table5_mamba-on_ibfm-on.yaml",
    "uni_rcm": "experiments/learners/uni_rcm.yaml",
    "cfm": "experiments/learners/cfm.yaml",
    "rlr": "experiments/learners/rlr.yaml",
}


def real_overrides(args: argparse.Namespace) -> list[str]:
    return [
        f"learner.name={args.learner}", "dataset.name=mvtec3d", f"dataset.root={args.root}", "dataset.preprocessing.enabled=true",
        f"dataset.image_size={args.image_size}", f"scenario.classes=[{args.class_name}]", "scenario.base=1", "scenario.increment=0",
        "scenario.steps=0", f"training.epochs={args.epochs}", "training.feature_cache=memory", "tracking.enabled=false",
        f"output_dir={REPO_ROOT / '.cache' / 'diag-out'}", *args.set,
    ]


@torch.no_grad()
def where_maxima_lie(learner, dataset, sigma: float) -> dict[str, np.ndarray]:
    """Per image: the map's maximum, whether its argmax has a 3-D point, distances to outline and border, winning modality."""
    learner.eval()
    rows: dict[str, list] = {k: [] for k in ("score", "on_valid", "outline_px", "border_px", "grid_ring", "winner", "valid_fraction", "score_valid")}
    for start in range(0, len(dataset), 8):
        batch = collate([dataset[i] for i in range(start, min(start + 8, len(dataset)))])
        raw = learner.anomaly_map(batch)
        grid = raw.shape[-2:]
        maps = upsample_and_smooth(raw, tuple(batch.mask.shape[-2:]), sigma)
        scaled = None
        if isinstance(learner, ScaledModalityMaps) and len(learner.modalities) == 2:
            per_modality = learner.modality_maps(batch)
            scaled = torch.stack([per_modality[m] / learner.map_scale[i] for i, m in enumerate(learner.modalities)], dim=1)
        for index in range(len(batch)):
            smoothed, valid = maps[index].numpy(), batch.valid[index].numpy()
            height, width = smoothed.shape
            y, x = np.unravel_index(smoothed.argmax(), smoothed.shape)
            inside = ndimage.distance_transform_edt(valid)  # distance of a valid pixel to the nearest pixel without a point
            outside = ndimage.distance_transform_edt(~valid)
            rows["score"].append(smoothed.max())
            rows["score_valid"].append(smoothed[valid].max() if valid.any() else 0.0)
            rows["on_valid"].append(bool(valid[y, x]))
            rows["outline_px"].append(inside[y, x] if valid[y, x] else -outside[y, x])
            rows["border_px"].append(min(y, x, height - 1 - y, width - 1 - x))
            gy, gx = y * grid[0] // height, x * grid[1] // width
            rows["grid_ring"].append(gy in (0, grid[0] - 1) or gx in (0, grid[1] - 1))
            rows["valid_fraction"].append(valid.mean())
            if scaled is not None:
                rows["winner"].append(int(scaled[index, :, gy, gx].argmax()))
            else:
                rows["winner"].append(-1)
    return {k: np.asarray(v) for k, v in rows.items()}


def describe(name: str, figures: dict[str, np.ndarray], modalities: tuple[str, ...]) -> None:
    outline = figures["outline_px"]
    print(f"\n{name}: {len(outline)} images")
    print(f"  argmax on a pixel without a 3-D point: {np.mean(~figures['on_valid']):.2f}")
    print(f"  argmax within 4 px of the outline (either side): {np.mean(np.abs(outline) <= 4):.2f}; median signed distance {np.median(outline):.1f} px")
    print(f"  argmax within 16 px of the image border: {np.mean(figures['border_px'] < 16):.2f}; on the grid's outer ring: {np.mean(figures['grid_ring']):.2f}")
    if (figures["winner"] >= 0).any():
        print("  modality winning at the argmax: " + ", ".join(f"{m} {np.mean(figures['winner'] == i):.2f}" for i, m in enumerate(modalities)))
    print(f"  score: mean {figures['score'].mean():.4f}; max over valid pixels only: mean {figures['score_valid'].mean():.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learner", choices=sorted(BASE_YAML), required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--root", default=str(REPO_ROOT / "data" / "real"))
    parser.add_argument("--class-name", default="cable_gland")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--splits", nargs="+", default=["validation"], choices=["train", "validation"], help="normal splits to diagnose (never test)")
    parser.add_argument("--dump", type=Path, default=None, help="write the per-image figures (.npz)")
    args = parser.parse_args()
    config = load_config(REPO_ROOT / BASE_YAML[args.learner], overrides=real_overrides(args))
    torch.set_num_threads(1)
    result = run_experiment(config, show_progress=False)
    summary = result.summary
    print(
        f"{args.learner}, {args.epochs} epochs, test: I-AUROC {summary['i_auroc/final_mean']:.3f} P-AUROC {summary['p_auroc/final_mean']:.3f} "
        f"AUPRO@0.3 {summary['aupro_30/final_mean']:.3f} AUPRO@0.01 {summary['aupro_1/final_mean']:.3f}"
    )
    root = prepare_data(config)
    dumps = {}
    for split in args.splits:
        dataset = split_dataset(config.dataset, root, [args.class_name], split, {args.class_name: 0}, load_xyz=True)
        figures = where_maxima_lie(result.learner, dataset, config.evaluation.smoothing_sigma)
        describe(f"{split} normals", figures, result.learner.modalities)
        dumps.update({f"{split}/{k}": v for k, v in figures.items()})
    if args.dump:
        np.savez(args.dump, **dumps)
        torch.save({"learner": result.learner.state_dict()}, args.dump.with_suffix(".pt"))


if __name__ == "__main__":
    main()
