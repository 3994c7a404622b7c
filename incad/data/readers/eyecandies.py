"""Reader for the Eyecandies dataset's own folder layout.

Layout::

    <root>/<Class>/{train,val,test_public}/data/NNN_<kind>

with, per sample, ``image_0..5`` (the same view under six lights; ``image_4``
is the RGB the papers use), a 16-bit ``depth`` PNG whose values map linearly
to metres through ``info_depth.yaml`` (``normalization: {min, max}``), and
``mask``, ``normals`` and ``pose``. Depth is back-projected to an organized
point cloud in the camera frame with the dataset's pinhole camera (focal
711.11 px, principal point at the image centre). Class folders keep their
CamelCase names. There are no defect-type folders: a test sample is defective
when its mask has a non-zero pixel (``defect_type`` "bad"), which is why test
masks are read when listing. Background removal is the shared plane + cluster
preprocessing (:mod:`incad.data.preprocess`) with Eyecandies' own settings.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml

from incad.data.readers.base import GOOD, REEXPORT_HINT, LayoutReader, Record, load_mask, read_pixels, report, require_dir
from incad.data.readers.registry import register_reader
from incad.errors import DataError

FOCAL_LENGTH = 711.11  # pixels; the same camera for every image
DEPTH_LEVELS = 65535.0
DEFECTIVE = "bad"
LIGHTS = range(6)


def back_project(depth: np.ndarray, focal: float = FOCAL_LENGTH) -> np.ndarray:
    """(H, W) depth in metres -> (H, W, 3) float32 camera-frame points, principal point at (W/2, H/2)."""
    height, width = depth.shape
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    x = (columns - width / 2) * depth / focal
    y = (rows - height / 2) * depth / focal
    return np.stack([x, y, depth], axis=-1).astype(np.float32)


def read_depth_metres(depth_png: Path, info_yaml: Path) -> np.ndarray:
    """The 16-bit depth PNG converted to metres: d / 65535 * (max - min) + min."""
    try:
        info = yaml.safe_load(info_yaml.read_text())
        low, high = float(info["normalization"]["min"]), float(info["normalization"]["max"])
    except FileNotFoundError as err:
        raise DataError(info_yaml, "is missing: the depth image has no info_depth YAML.", "Restore it from the dataset.") from err
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            info_yaml, f"has no readable normalization min/max ({err}).", "Restore it from the dataset."
        ) from err
    values = read_pixels(depth_png, "a depth image")
    if values.ndim != 2 or values.dtype not in (np.uint16, np.int32):
        raise DataError(
            depth_png, f"is a {values.dtype} image of shape {values.shape}; Eyecandies depth is a 16-bit grey PNG.", REEXPORT_HINT
        )
    return values.astype(np.float64) / DEPTH_LEVELS * (high - low) + low


@register_reader("eyecandies")
class EyecandiesReader(LayoutReader):
    """Eyecandies samples, with ``image_<light>`` as the RGB image."""

    name = "eyecandies"
    splits = {"train": "train", "validation": "val", "test": "test_public"}
    class_markers = tuple(f"{folder}/data" for folder in splits.values())

    def __init__(self, light: int = 4) -> None:
        if light not in LIGHTS:
            raise ValueError(f"light must be one of {list(LIGHTS)}, got {light}")
        self.light = light

    @classmethod
    def create(cls, light: int) -> EyecandiesReader:
        return cls(light)

    def list_records(self, root: Path, class_name: str, split: str, skipped: list[DataError] | None = None) -> list[Record]:
        data_dir = Path(root) / class_name / self.splits[split] / "data"
        require_dir(data_dir, f"the {split} split of an Eyecandies class, holding NNN_image_{self.light}.png files")
        suffix = f"_image_{self.light}"
        rgb_files = sorted(path for path in data_dir.glob(f"*{suffix}.png"))
        if not rgb_files:
            report(DataError(data_dir, f"contains no *{suffix}.png image.", "Check dataset.light and the folder."), skipped)
        records = []
        for rgb in rgb_files:
            prefix = re.sub(f"{suffix}$", "", rgb.stem)
            depth = data_dir / f"{prefix}_depth.png"
            gt, label = None, 0
            try:
                if split == "test":
                    gt = data_dir / f"{prefix}_mask.png"
                    if not gt.is_file():
                        raise DataError(
                            gt,
                            f"is missing: the test sample {rgb} has no mask, so it cannot be labelled good or defective.",
                            "Restore the mask from the dataset or remove the sample's files.",
                        )
                    label = int(load_mask(gt).any())
            except DataError as problem:
                report(problem, skipped)
                continue
            records.append(Record(rgb, depth, gt, class_name, DEFECTIVE if label else GOOD, label))
        return records

    def read_points(self, record: Record) -> np.ndarray:
        depth_png = record.points_file
        info = depth_png.with_name(depth_png.name.replace("_depth.png", "_info_depth.yaml"))
        return back_project(read_depth_metres(depth_png, info))
