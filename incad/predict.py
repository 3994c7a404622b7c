"""``incad predict``: score image files with a registered model (``models:/<name>@champion``).

Needs only the registry: the installed incad rebuilds the learner from the
verified weights and config stored with the model (no code from the model
runs, see :mod:`incad.tracking.anomaly_model`). Inputs are RGB files or
folders (searched recursively, ground-truth ``gt/`` folders skipped); a point
cloud is taken from the MVTec 3D-AD sibling ``../xyz/<stem>.tiff`` when the
model uses depth. Writes ``scores.json``, ``scores.csv`` and an overlay PNG
per image; ``--out`` is checked before the model is loaded, and an earlier
prediction there is replaced only with ``overwrite``.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402

from incad.data.readers.base import load_rgb  # noqa: E402
from incad.data.readers.mvtec3d import XYZ_SUFFIXES  # noqa: E402
from incad.errors import DataError  # noqa: E402
from incad.tracking.anomaly_model import load_registered_model  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SKIPPED_FOLDERS = {"gt", "xyz"}
SCORE_FILES = ("scores.json", "scores.csv")
OVERLAY_PATTERN = "[0-9][0-9][0-9][0-9]_*_overlay.png"


@dataclass
class Prediction:
    """Scores per image and where the files went."""

    scores: pd.DataFrame  # columns image, score
    scores_json: Path
    scores_csv: Path
    overlays: list[Path]


def collect_inputs(paths: list[Path]) -> pd.DataFrame:
    """Image files (given or found under folders) and their point clouds, as the model's input frame."""
    images: list[Path] = []
    for path in paths:
        if path.is_dir():
            images.extend(
                sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not SKIPPED_FOLDERS & set(p.relative_to(path).parts[:-1]))
            )
        elif path.is_file():
            images.append(path)
        else:
            raise DataError(path, "does not exist.", "Pass image files or folders that hold them.")
    if not images:
        raise DataError(paths[0], "holds no PNG or JPEG image.", "Pass image files or folders that hold them.")
    return pd.DataFrame({"image": [str(image) for image in images], "xyz": [point_cloud_of(image) for image in images]})


def point_cloud_of(image: Path) -> str | None:
    """The MVTec 3D-AD point cloud of ``rgb/NNN.png`` (``xyz/NNN.tiff``), if there is one."""
    for suffix in XYZ_SUFFIXES:
        candidate = image.parent.parent / "xyz" / f"{image.stem}{suffix}"
        if candidate.is_file():
            return str(candidate)
    return None


def overlay(image_path: Path, anomaly_map: np.ndarray, low: float, high: float, out: Path) -> Path:
    """The image with the anomaly map (scaled to [low, high], jet colours) blended over it."""
    size = anomaly_map.shape[::-1]
    rgb = np.asarray(Image.fromarray(load_rgb(image_path)).resize(size, Image.BICUBIC), dtype=np.float32) / 255.0
    heat = colormaps["jet"](np.clip((anomaly_map - low) / max(high - low, 1e-12), 0.0, 1.0))[..., :3]
    Image.fromarray((255 * (0.55 * rgb + 0.45 * heat)).astype(np.uint8)).save(out)
    return out


def earlier_prediction(out_dir: Path) -> list[Path]:
    """The files an earlier ``incad predict`` wrote into ``out_dir``."""
    return sorted([*(out_dir / name for name in SCORE_FILES if (out_dir / name).exists()), *out_dir.glob(OVERLAY_PATTERN)])


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir`` and make sure the scores can go there, before any model is loaded."""
    hint = "Pass another --out folder."
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "is a file, not a folder.", hint)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as error:
        raise DataError(out_dir, f"cannot be written ({error.strerror}).", hint) from None
    earlier = earlier_prediction(out_dir)
    if earlier and not overwrite:
        names = ", ".join(path.name for path in earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
        raise DataError(out_dir, f"already holds an earlier prediction ({names}).", "Pass --overwrite to replace it, or another --out folder.")


def predict(model_uri: str, paths: list[Path], out_dir: Path, overwrite: bool = False, object_name: str | None = None) -> Prediction:
    """Score every image with the model at ``model_uri``; write scores and overlays into ``out_dir``.

    ``object_name`` (``--object``) names the class of every image, for a
    learner whose map depends on it (``text_guided``); without it the class is unknown.

    An earlier prediction in ``out_dir`` is refused unless ``overwrite``; then
    its files are removed once the new scores exist, so overlays never mix.
    """
    check_out_dir(out_dir, overwrite)
    inputs = collect_inputs(paths)
    if object_name is not None:
        inputs["object"] = object_name
    frame = load_registered_model(model_uri).predict(inputs)
    for path in earlier_prediction(out_dir):
        path.unlink()
    maps = np.stack(frame["anomaly_map"].to_list())
    low, high = float(maps.min()), float(maps.max())  # one scale for all overlays, so they compare
    overlays = []
    for index, (image, anomaly_map) in enumerate(zip(frame["image"], maps)):
        overlays.append(overlay(Path(image), anomaly_map, low, high, out_dir / f"{index:04d}_{Path(image).stem}_overlay.png"))
    scores = frame[["image", "score"]].assign(overlay=[str(path) for path in overlays])
    scores_json = out_dir / "scores.json"
    scores_json.write_text(json.dumps({"model": model_uri, "images": scores.to_dict(orient="records")}, indent=2))
    scores_csv = out_dir / "scores.csv"
    with scores_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "score", "overlay"])
        writer.writerows(scores.itertuples(index=False))
    return Prediction(scores, scores_json, scores_csv, overlays)


def summary(prediction: Prediction, top: int = 5) -> str:
    """A few lines for the terminal: count, score range, the most anomalous images."""
    scores = prediction.scores.sort_values("score", ascending=False)
    values = scores["score"].to_numpy()
    lines = [
        f"{len(values)} images scored: min {values.min():.4f}, median {np.median(values):.4f}, max {values.max():.4f}",
        f"most anomalous (top {min(top, len(values))}):",
        *(f"  {row.score:.4f}  {row.image}" for row in scores.head(top).itertuples()),
        f"scores: {prediction.scores_json} and {prediction.scores_csv}; overlays in {prediction.scores_json.parent}",
    ]
    return "\n".join(lines)
