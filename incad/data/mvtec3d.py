"""Reader for MVTec 3D-AD's own folder layout (also used by incad's synthetic data).

Layout::

    <root>/<class>/{train,validation}/good/{rgb,xyz}/NNN.{png,tiff}
    <root>/<class>/test/{good,<defect>}/{rgb,xyz,gt}/NNN.{png,tiff,png}

rgb is an 8-bit RGB PNG, xyz an H x W x 3 float TIFF organized point cloud in
which (0, 0, 0) means "no point", gt an 8-bit PNG whose non-zero values (defect
ids such as 255, 254) mark defective pixels. Files are only ever read: every
problem is reported as a :class:`DataError` that names the file and says what
to do, so a user never has to read a stack trace to fix a dataset.

:class:`MVTec3DReader` bundles how a layout lists and reads its samples; the
readers of the other layouts (Eyecandies, MVTec AD) subclass it, so the
dataset, the preprocessing and ``incad data check`` work on all of them.
Functions that take ``skipped`` collect per-sample problems there and go on
(``on_bad_sample: skip``) instead of raising the first one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from incad.data.sample import Sample
from incad.errors import ConfigError, DataError

SPLITS = ("train", "validation", "test")
GOOD = "good"
XYZ_SUFFIXES = (".tiff", ".tif")
# Robust per-image depth range: the extreme 1 % at each end (sensor outliers,
# flying pixels at object edges) must not squeeze the rest of the range.
DEPTH_PERCENTILES = (1.0, 99.0)
# Lowest depth value of a valid point, so that ``depth > 0`` holds exactly where
# there is a point and the farthest surface stays distinguishable from a hole.
DEPTH_FLOOR = 0.05
# Exceptions Pillow and tifffile raise on damaged files (tifffile in particular
# surfaces truncation as ValueError, IndexError or struct.error), and Pillow's
# refusal of an image too large to decode safely (a decompression bomb).
_READ_ERRORS = (OSError, ValueError, SyntaxError, IndexError, KeyError, EOFError, struct.error, Image.DecompressionBombError)
_REEXPORT_HINT = "Re-export or remove this file."

OnBadSample = Literal["error", "skip"]


def report(problem: DataError, skipped: list[DataError] | None) -> None:
    """Raise ``problem``, or record it in ``skipped`` when the caller skips bad samples."""
    if skipped is None:
        raise problem
    skipped.append(problem)


@dataclass(frozen=True)
class Record:
    """Where one sample's files are and what it is; ``label`` is 1 for a defect."""

    rgb: Path
    xyz: Path | None
    gt: Path | None
    class_name: str
    defect_type: str
    label: int


def list_classes(
    root: str | Path, skipped: list[DataError] | None = None, markers: tuple[str, ...] = ("train", "test")
) -> list[str]:
    """Sorted names of the class folders of ``root``: those holding one of the ``markers`` sub-folders.

    Any other visible sub-folder (an empty class, another layout) is a problem.
    """
    root = Path(root)
    _require_dir(root, "the dataset root, with one folder per class (e.g. bagel/, cable_gland/)")
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


def list_records(root: str | Path, class_name: str, split: str, skipped: list[DataError] | None = None) -> list[Record]:
    """All samples of one class and split, in file-name order (test: defect folders sorted)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    class_dir = Path(root) / class_name
    if not class_dir.is_dir():
        available = ", ".join(list_classes(root))
        raise DataError(
            class_dir,
            f"is missing: the dataset has no class '{class_name}'.",
            f"Expected a class folder with train/, validation/ and test/ inside; available classes: {available}.",
        )
    split_dir = class_dir / split
    if split != "test":
        _require_dir(split_dir, f"the {split} split, holding good/rgb/NNN.png and good/xyz/NNN.tiff")
        return _records_of_folder(split_dir / GOOD, class_name, read_gt=False, skipped=skipped)
    _require_dir(split_dir, "the test split, holding good/ and one folder per defect type, each with rgb/, xyz/ and gt/")
    type_dirs = sorted(entry for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not type_dirs:
        raise DataError(
            split_dir, "contains no good/ or defect-type folder.", "Each test sample lies in test/<good or defect type>/rgb/."
        )
    return [record for type_dir in type_dirs for record in _records_of_folder(type_dir, class_name, True, skipped)]


def _records_of_folder(folder: Path, class_name: str, read_gt: bool, skipped: list[DataError] | None) -> list[Record]:
    """Pair every rgb/NNN.png of ``folder`` with its xyz/NNN.tiff and, in test, gt/NNN.png."""
    rgb_dir = folder / "rgb"
    _require_dir(rgb_dir, "a folder of RGB images rgb/NNN.png")
    rgb_files = sorted(rgb_dir.glob("*.png"))
    if not rgb_files:
        raise DataError(
            rgb_dir, "contains no PNG image.", "Each sample needs rgb/NNN.png (and xyz/NNN.tiff with the same number)."
        )
    xyz_dir, gt_dir = folder / "xyz", folder / "gt"
    defect_type = folder.name
    label = 0 if defect_type == GOOD else 1
    records = []
    for rgb in rgb_files:
        try:
            xyz = _xyz_file(xyz_dir, rgb) if xyz_dir.is_dir() else None
            gt = gt_dir / f"{rgb.stem}.png" if read_gt else None
            if gt is not None and not gt.is_file():
                if label == 1:
                    raise missing_mask(gt, rgb)
                gt = None  # a good sample without a mask is simply all-good
        except DataError as problem:
            report(problem, skipped)
            continue
        records.append(Record(rgb, xyz, gt, class_name, defect_type, label))
    return records


def missing_mask(gt: Path, rgb: Path) -> DataError:
    return DataError(
        gt,
        f"is missing: the defective test sample {rgb} has no ground-truth mask.",
        "Add the mask (8-bit PNG, non-zero = defect) or remove the sample.",
    )


def _xyz_file(xyz_dir: Path, rgb: Path) -> Path:
    for suffix in XYZ_SUFFIXES:
        candidate = xyz_dir / f"{rgb.stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(
        xyz_dir / f"{rgb.stem}.tiff",
        f"is missing: the RGB image {rgb} has no point cloud with the same number.",
        "Add the xyz TIFF or remove the RGB image.",
    )


def _require_dir(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise DataError(path, "is missing or not a folder.", f"Expected {expected} (MVTec 3D-AD layout).")


def load_rgb(path: str | Path) -> np.ndarray:
    """An RGB image as H x W x 3 uint8 (grey or RGBA files are converted)."""
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except _READ_ERRORS as err:
        raise DataError(path, f"cannot be read as an image ({err}).", _REEXPORT_HINT) from err


def load_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as H x W bool: any non-zero value (a defect id) is a defect."""
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as image:
            values = np.asarray(image)
    except _READ_ERRORS as err:
        raise DataError(path, f"cannot be read as a mask image ({err}).", _REEXPORT_HINT) from err
    return values.any(axis=-1) if values.ndim == 3 else values != 0


def load_xyz(path: str | Path) -> np.ndarray:
    """An organized point cloud as H x W x 3 float32, (0, 0, 0) where there is no point."""
    path = Path(path)
    _require_file(path)
    try:
        points = tifffile.imread(path)
    except _READ_ERRORS as err:
        raise DataError(path, f"cannot be read as a TIFF point cloud ({err}).", _REEXPORT_HINT) from err
    if points.ndim != 3 or points.shape[-1] != 3:
        raise DataError(
            path,
            f"has shape {points.shape}; an organized point cloud must be H x W x 3 (x, y, z per pixel).",
            _REEXPORT_HINT,
        )
    if not np.issubdtype(points.dtype, np.floating):
        raise DataError(path, f"holds {points.dtype} values; point coordinates must be floating point.", _REEXPORT_HINT)
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


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "is missing or not a file.", "Check the dataset folder.")


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


def _resize(channels_first: Tensor, size: int, mode: str) -> Tensor:
    """(C, H, W) -> (C, size, size); nearest modes use pixel centres so masks, xyz and RGB stay aligned."""
    if channels_first.shape[-2:] == (size, size):
        return channels_first
    antialias = mode == "bicubic"
    return F.interpolate(channels_first[None], size=(size, size), mode=mode, antialias=antialias)[0]


@dataclass
class RawSample:
    """One sample's arrays at file resolution, checked to have one size."""

    rgb: np.ndarray  # (H, W, 3) uint8
    points: np.ndarray | None  # (H, W, 3) float32, 0 = no point
    mask: np.ndarray | None  # (H, W) bool


class MVTec3DReader:
    """How the MVTec 3D-AD layout lists and reads samples (also ``folder`` and ``synthetic`` data).

    ``splits`` maps incad's split names to the layout's folder names;
    ``has_points`` says whether the layout can carry point clouds at all.
    """

    name = "mvtec3d"
    splits = {"train": "train", "validation": "validation", "test": "test"}
    has_points = True

    def list_classes(self, root: Path, skipped: list[DataError] | None = None) -> list[str]:
        return list_classes(root, skipped)

    def list_records(self, root: Path, class_name: str, split: str, skipped: list[DataError] | None = None) -> list[Record]:
        return list_records(root, class_name, split, skipped)

    def read_points(self, record: Record) -> np.ndarray:
        return load_xyz(record.xyz)

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
            if record.xyz is None:
                raise DataError(
                    record.rgb.parent.parent / "xyz",
                    f"is missing: the sample {record.rgb} has no point cloud.",
                    "Add the point clouds or use scenario.modality: rgb.",
                )
            points = self.read_points(record)
            _check_same_size(record.rgb, size, record.xyz, points.shape[:2])
        return RawSample(rgb, points, mask)


MVTEC3D = MVTec3DReader()


class MVTec3DDataset(Dataset):
    """Samples of several classes of one split, resized to ``image_size`` squares.

    RGB is resized bicubic with antialiasing (and clamped back to [0, 1]);
    xyz and gt nearest (``nearest-exact``, i.e. pixel centres, so a point never
    moves off the RGB pixel it belongs to); depth is computed after resizing.
    ``reader`` picks the folder layout. With ``on_bad_sample="skip"`` every
    sample is read once up front and the bad ones are left out and listed in
    ``skipped``; with ``"error"`` the first bad file raises its DataError.
    """

    def __init__(
        self,
        root: str | Path,
        class_names: list[str],
        split: str,
        image_size: int,
        object_ids: dict[str, int],
        load_xyz: bool = True,
        reader: MVTec3DReader = MVTEC3D,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        unknown = [name for name in class_names if name not in object_ids]
        if unknown:
            raise ConfigError(f"classes {unknown} have no entry in object_ids {object_ids}")
        if image_size < 1:
            raise ConfigError(f"image_size must be positive, got {image_size}")
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.load_xyz = load_xyz
        self.reader = reader
        self.skipped: list[DataError] | None = [] if on_bad_sample == "skip" else None
        records = [record for name in class_names for record in reader.list_records(self.root, name, split, self.skipped)]
        if load_xyz:
            without_xyz = next((record for record in records if record.xyz is None), None)
            if without_xyz is not None:
                raise DataError(
                    without_xyz.rgb.parent.parent / "xyz",
                    "is missing: this sample folder has RGB images but no point clouds.",
                    "Add the xyz/NNN.tiff files or load the dataset with load_xyz=False.",
                )
        if self.skipped is not None:
            records = [record for record in records if self._readable(record)]
        self.records = records
        self.object_ids_per_sample = [object_ids[record.class_name] for record in self.records]

    def _readable(self, record: Record) -> bool:
        try:
            self.reader.read_sample(record, self.load_xyz)
        except DataError as problem:
            self.skipped.append(problem)
            return False
        return True

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        raw = self.reader.read_sample(record, self.load_xyz)
        image = torch.from_numpy(raw.rgb).permute(2, 0, 1).float().div(255.0)
        image = _resize(image, self.image_size, "bicubic").clamp(0.0, 1.0)

        mask = torch.zeros(self.image_size, self.image_size)
        if raw.mask is not None:
            mask = (_resize(torch.from_numpy(raw.mask)[None].float(), self.image_size, "nearest-exact")[0] > 0.5).float()

        depth = xyz = valid = None
        if raw.points is not None:
            xyz = _resize(torch.from_numpy(raw.points).permute(2, 0, 1), self.image_size, "nearest-exact").contiguous()
            valid = (xyz != 0).any(dim=0)
            depth = torch.from_numpy(depth_image(xyz.permute(1, 2, 0).numpy(), valid.numpy()))[None]

        return Sample(
            image=image,
            mask=mask,
            label=record.label,
            object_id=self.object_ids_per_sample[index],
            defect_type=record.defect_type,
            path=str(record.rgb),
            depth=depth,
            xyz=xyz,
            valid=valid,
        )
