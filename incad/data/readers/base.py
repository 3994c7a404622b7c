"""What every layout reader shares: the sample record, checked file loaders and the :class:`LayoutReader` base.

Files are only ever read: every problem is reported as a :class:`DataError`
that names the file and says what to do, so a user never has to read a stack
trace to fix a dataset. Functions that take ``skipped`` collect per-sample
problems there and go on (``on_bad_sample: skip``) instead of raising the
first one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image

from incad.errors import DataError

SPLITS = ("train", "validation", "test")
GOOD = "good"
# Robust per-image depth range: the extreme 1 % at each end (sensor outliers,
# flying pixels at object edges) must not squeeze the rest of the range.
DEPTH_PERCENTILES = (1.0, 99.0)
# Lowest depth value of a valid point, so that ``depth > 0`` holds exactly where
# there is a point and the farthest surface stays distinguishable from a hole.
DEPTH_FLOOR = 0.05
# Exceptions Pillow and tifffile raise on damaged files (tifffile in particular
# surfaces truncation as ValueError, IndexError or struct.error), and Pillow's
# refusal of an image too large to decode safely (a decompression bomb).
READ_ERRORS = (OSError, ValueError, SyntaxError, IndexError, KeyError, EOFError, struct.error, Image.DecompressionBombError)
REEXPORT_HINT = "Re-export or remove this file."

OnBadSample = Literal["error", "skip"]


def report(problem: DataError, skipped: list[DataError] | None) -> None:
    """Raise ``problem``, or record it in ``skipped`` when the caller skips bad samples."""
    if skipped is None:
        raise problem
    skipped.append(problem)


@dataclass(frozen=True)
class Record:
    """Where one sample's files are and what it is; ``label`` is 1 for a defect.

    ``points_file`` is the file the layout's reader turns into the point cloud
    (an xyz TIFF in MVTec 3D-AD, a depth PNG in Eyecandies), None without one.
    """

    rgb: Path
    points_file: Path | None
    gt: Path | None
    class_name: str
    defect_type: str
    label: int


@dataclass
class RawSample:
    """One sample's arrays at file resolution, checked to have one size."""

    rgb: np.ndarray  # (H, W, 3) uint8
    points: np.ndarray | None  # (H, W, 3) float32, 0 = no point
    mask: np.ndarray | None  # (H, W) bool


def list_class_folders(root: str | Path, markers: tuple[str, ...], skipped: list[DataError] | None = None) -> list[str]:
    """Sorted names of the class folders of ``root``: those holding one of the ``markers`` sub-folders.

    Any other visible sub-folder (an empty class, another layout) is a problem.
    """
    root = Path(root)
    require_dir(root, "the dataset root, with one folder per class (e.g. bagel/, cable_gland/)")
    expected = " or ".join(f"{marker}/" for marker in markers)
    classes = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if any((entry / marker).is_dir() for marker in markers):
            classes.append(entry.name)
        else:
            report(
                DataError(
                    entry,
                    f"is a class folder without a {expected} folder (empty or in another layout).",
                    "Fill it in the dataset's layout or move it out of the dataset root.",
                ),
                skipped,
            )
    if not classes:
        raise DataError(
            root,
            f"contains no class folder with a {expected} subfolder.",
            "Point the dataset root at the folder that holds the class folders, not at a class folder itself.",
        )
    return classes


def missing_mask(gt: Path, rgb: Path) -> DataError:
    """The problem of a defective sample without its ground-truth mask."""
    return DataError(
        gt,
        f"is missing: the defective test sample {rgb} has no ground-truth mask.",
        "Add the mask (8-bit PNG, non-zero = defect) or remove the sample.",
    )


def require_dir(path: Path, expected: str) -> None:
    """Raise a DataError saying what ``path`` should hold unless it is a folder."""
    if not path.is_dir():
        raise DataError(path, "is missing or not a folder.", f"Expected {expected} (MVTec 3D-AD layout).")


def require_file(path: Path) -> None:
    """Raise a DataError unless ``path`` is a file."""
    if not path.is_file():
        raise DataError(path, "is missing or not a file.", "Check the dataset folder.")


def load_rgb(path: str | Path) -> np.ndarray:
    """An RGB image as H x W x 3 uint8 (grey or RGBA files are converted)."""
    path = Path(path)
    require_file(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except READ_ERRORS as err:
        raise DataError(path, f"cannot be read as an image ({err}).", REEXPORT_HINT) from err


def read_pixels(path: str | Path, kind: str) -> np.ndarray:
    """The pixel values of an image file as stored; a missing or unreadable file is a DataError naming it as ``kind``."""
    path = Path(path)
    require_file(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except READ_ERRORS as err:
        raise DataError(path, f"cannot be read as {kind} ({err}).", REEXPORT_HINT) from err


def load_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as H x W bool: any non-zero value (a defect id) is a defect."""
    values = read_pixels(path, "a mask image")
    return values.any(axis=-1) if values.ndim == 3 else values != 0


def load_xyz(path: str | Path) -> np.ndarray:
    """An organized point cloud as H x W x 3 float32, (0, 0, 0) where there is no point."""
    path = Path(path)
    require_file(path)
    try:
        points = tifffile.imread(path)
    except READ_ERRORS as err:
        raise DataError(path, f"cannot be read as a TIFF point cloud ({err}).", REEXPORT_HINT) from err
    if points.ndim != 3 or points.shape[-1] != 3:
        raise DataError(
            path,
            f"has shape {points.shape}; an organized point cloud must be H x W x 3 (x, y, z per pixel).",
            REEXPORT_HINT,
        )
    if not np.issubdtype(points.dtype, np.floating):
        raise DataError(path, f"holds {points.dtype} values; point coordinates must be floating point.", REEXPORT_HINT)
    points = points.astype(np.float32, copy=False)
    bad = ~np.isfinite(points).all(axis=-1)
    if bad.any():
        raise DataError(
            path,
            f"has {int(bad.sum())} pixels with NaN or infinite coordinates; incad expects (0, 0, 0) where there is no point.",
            "Write a copy with those pixels set to 0 (numpy.nan_to_num(xyz, nan=0, posinf=0, neginf=0)) and use that.",
        )
    return require_points(path, points)


def require_points(path: Path, points: np.ndarray) -> np.ndarray:
    """``points`` if at least one pixel has a point: an all-zero cloud is an empty or failed scan."""
    if not points.any():
        raise DataError(
            path, "has no point at all (every coordinate is 0): the scan is empty.", "Re-export the scan or remove the sample."
        )
    return points


def depth_image(xyz: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A [0, 1] depth image from the z channel: nearer to the camera is brighter, 0 = no point.

    z is the distance to the camera, so the range is taken per image from the
    1st/99th percentiles of z over valid pixels only (holes would otherwise pull
    the range to 0 m) and inverted: the nearest surface (the top of the object)
    maps to 1, the farthest (the background) to ``DEPTH_FLOOR``. Valid points
    stay strictly above 0 so the map still tells "far" from "no point".
    Values outside the percentile range are clipped.
    """
    depth = np.zeros(valid.shape, dtype=np.float32)
    if not valid.any():
        return depth
    z = xyz[..., 2][valid].astype(np.float64)
    near, far = np.percentile(z, DEPTH_PERCENTILES)
    closeness = np.clip((far - z) / max(far - near, 1e-12), 0.0, 1.0)
    depth[valid] = DEPTH_FLOOR + (1.0 - DEPTH_FLOOR) * closeness
    return depth


def _check_same_size(reference: Path, reference_size: tuple[int, int], other: Path, other_size: tuple[int, int]) -> None:
    if reference_size != other_size:
        raise DataError(
            other,
            f"is {other_size[1]}x{other_size[0]} (WxH) but {reference} is {reference_size[1]}x{reference_size[0]}; "
            "the RGB image, point cloud and mask of a sample must have the same size.",
            "Re-export the files at one resolution or remove the sample.",
        )


class LayoutReader:
    """How one folder layout lists and reads samples, so the dataset, the preprocessing and ``incad data check`` serve every layout.

    A layout says where its samples are (:meth:`list_records`) and how its
    points are stored (:meth:`read_points`). ``name`` names the layout (in
    reports and the preprocessing cache key), ``splits`` maps incad's split
    names to the layout's folder names, ``class_markers`` are the sub-folders
    that make a folder a class, and ``has_points`` says whether the layout can
    carry point clouds at all.
    """

    name: str
    splits: dict[str, str]
    class_markers: tuple[str, ...] = ("train", "test")
    has_points = True

    @classmethod
    def create(cls, light: int) -> LayoutReader:
        """The reader for ``dataset.light``; only a layout with several lights to pick from uses it."""
        return cls()

    def list_classes(self, root: Path, skipped: list[DataError] | None = None) -> list[str]:
        return list_class_folders(root, self.class_markers, skipped)

    def list_records(self, root: Path, class_name: str, split: str, skipped: list[DataError] | None = None) -> list[Record]:
        raise NotImplementedError

    def read_points(self, record: Record) -> np.ndarray:
        raise NotImplementedError

    def read_mask(self, record: Record) -> np.ndarray:
        return load_mask(record.gt)

    def read_sample(self, record: Record, with_points: bool) -> RawSample:
        """Every file of ``record``, checked to be readable and of one size."""
        rgb = load_rgb(record.rgb)
        size = rgb.shape[:2]
        mask = points = None
        if record.gt is not None:
            mask = self.read_mask(record)
            _check_same_size(record.rgb, size, record.gt, mask.shape)
        if with_points:
            if record.points_file is None:
                raise DataError(
                    record.rgb.parent.parent / "xyz",
                    f"is missing: the sample {record.rgb} has no point cloud.",
                    "Add the point clouds or use scenario.modality: rgb.",
                )
            points = self.read_points(record)
            _check_same_size(record.rgb, size, record.points_file, points.shape[:2])
        return RawSample(rgb, points, mask)
