"""Standard point-cloud preprocessing (BTF, reused by M3DM and CFM), written once into a cache.

Per sample: fit a plane with RANSAC (open3d ``segment_plane``) to the valid
points of the image's border strips, where only the background is; remove
every point within ``plane_distance`` of that plane (in xyz and RGB); keep the
object, the largest cluster of what is left (without flying pixels and clutter).
BTF finds it with DBSCAN over the unorganized points (``clustering: dbscan``);
the cloud is organized, though, so by default (``clustering: grid``) it is the
largest connected component of the pixel grid, 8-neighbours joined when their
3-D distance is below ``grid_eps``: one pass of a union-find over the pixels
instead of a radius search per point. Optionally fill small holes AST-style: a
missing point becomes the mean of its valid 3x3 neighbours, repeated
``fill_passes`` times.

The result is a dataset in the MVTec 3D-AD layout in a cache folder named by a
hash of the source folder, the reader, the classes, the settings and a
fingerprint of the classes' files (name, size and modification time of each), so
running twice reuses it, a changed setting or file makes a new entry, and the
user's files are only ever read. It is written to a staging folder and renamed
when complete, as the synthetic generator does. Samples are processed in a
process pool with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image
from pydantic import BaseModel, Field
from scipy import ndimage
from tqdm import tqdm

from incad.data.fingerprint import folder_fingerprint
from incad.data.readers.base import GOOD, LayoutReader, OnBadSample, Record, require_points
from incad.errors import ConfigError, DataError
from incad.paths import path_within, safe_name

# Bump when the written output changes, so caches of older versions are not reused.
PREPROCESS_VERSION = 1
MANIFEST = "incad_preprocessing.json"


class PreprocessingConfig(BaseModel, extra="forbid"):
    """``dataset.preprocessing``: off by default; the defaults are BTF's values for MVTec 3D-AD (metres)."""

    enabled: bool = False
    remove_background: bool = True
    ransac_distance: float = Field(0.004, gt=0, description="RANSAC inlier distance of the plane fit")
    ransac_n: int = Field(50, ge=3, description="points drawn per RANSAC hypothesis")
    ransac_iterations: int = Field(1000, ge=1)
    plane_distance: float = Field(0.005, ge=0, description="points nearer than this to the plane are removed")
    border: int = Field(10, ge=1, description="width in pixels of the border strips the plane is fitted to")
    clustering: Literal["grid", "dbscan"] = Field(
        "grid", description="how the object is found: grid components of the organized cloud, or BTF's DBSCAN"
    )
    grid_eps: float = Field(0.006, gt=0, description="grid neighbours nearer than this in 3-D are connected")
    dbscan_eps: float = Field(0.006, gt=0)
    dbscan_min_points: int = Field(30, ge=1)
    fill_holes: bool = False
    fill_passes: int = Field(3, ge=1)
    workers: int = Field(0, ge=0, description="processes; 0 = one per CPU core, 1 = serial")

    def fingerprint(self) -> dict:
        """The settings that change the output (not ``enabled`` or ``workers``)."""
        return self.model_dump(exclude={"enabled", "workers"})


def border_mask(shape: tuple[int, int], width: int) -> np.ndarray:
    """True on the ``width``-pixel strips along the four image edges."""
    inner = np.zeros(shape, dtype=bool)
    inner[width:-width, width:-width] = True
    return ~inner


def _point_cloud(points: np.ndarray):
    import open3d as o3d

    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))


def foreground_mask(points: np.ndarray, settings: PreprocessingConfig) -> np.ndarray:
    """(H, W) bool: the points kept, i.e. off the background plane and in the largest cluster."""
    return largest_cluster(points, off_plane_mask(points, settings), settings)


def off_plane_mask(points: np.ndarray, settings: PreprocessingConfig) -> np.ndarray:
    """(H, W) bool: the valid points farther than ``plane_distance`` from the RANSAC plane of the border strips.

    With fewer valid border points than ``ransac_n`` there is no plane to fit
    (the background is already gone) and every valid point is kept.
    """
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    o3d.utility.random.seed(0)  # RANSAC draws: same file, same result
    valid = points.any(axis=-1)
    keep = valid.copy()
    border_points = points[border_mask(valid.shape, settings.border) & valid]
    if len(border_points) >= settings.ransac_n:
        plane, _ = _point_cloud(border_points).segment_plane(
            settings.ransac_distance, settings.ransac_n, settings.ransac_iterations
        )
        normal, offset = np.asarray(plane[:3]), plane[3]
        distance = np.abs(points.astype(np.float64) @ normal + offset) / np.linalg.norm(normal)
        keep &= distance > settings.plane_distance
    return keep


def largest_cluster(points: np.ndarray, candidates: np.ndarray, settings: PreprocessingConfig) -> np.ndarray:
    """(H, W) bool: the largest cluster of the ``candidates`` points, by ``settings.clustering``."""
    if not candidates.any():
        return candidates.copy()
    if settings.clustering == "grid":
        from incad.data.grid_components import largest_grid_component

        return largest_grid_component(points, candidates, settings.grid_eps)
    keep = candidates.copy()
    labels = np.asarray(_point_cloud(points[keep]).cluster_dbscan(settings.dbscan_eps, settings.dbscan_min_points))
    clustered = labels >= 0
    largest = np.bincount(labels[clustered]).argmax() if clustered.any() else -1
    keep[keep] = labels == largest
    return keep


def fill_holes(points: np.ndarray, passes: int) -> np.ndarray:
    """AST's hole filling: each missing point becomes the mean of its valid 3x3 neighbours, ``passes`` times."""
    points = points.copy()
    kernel = np.ones((3, 3))
    for _ in range(passes):
        valid = points.any(axis=-1)
        counts = ndimage.convolve(valid.astype(np.float64), kernel, mode="constant")
        fillable = ~valid & (counts > 0)
        if not fillable.any():
            break
        for channel in range(3):
            sums = ndimage.convolve(points[..., channel].astype(np.float64), kernel, mode="constant")
            points[..., channel][fillable] = (sums[fillable] / counts[fillable]).astype(points.dtype)
    return points


def preprocess_points(points: np.ndarray, settings: PreprocessingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(processed points, kept mask); removed points become (0, 0, 0)."""
    keep = foreground_mask(points, settings) if settings.remove_background else points.any(axis=-1)
    processed = np.where(keep[..., None], points, 0.0).astype(np.float32)
    if settings.fill_holes:
        processed = fill_holes(processed, settings.fill_passes)
    return processed, keep


@dataclass(frozen=True)
class _Task:
    record: Record
    target: Path  # the sample folder in the staging cache: <class>/<split>/<defect type>


@dataclass(frozen=True)
class PreprocessedDataset:
    """The cache folder (MVTec 3D-AD layout) and the source samples left out as bad."""

    root: Path
    skipped: list[str]  # "path: problem" lines
    counts: dict[str, dict[str, int]]  # class -> split -> samples written
    reused: bool


def _process(task: _Task, reader: LayoutReader, settings: PreprocessingConfig) -> tuple[str, str, str] | None:
    """Write one preprocessed sample; a bad sample gives its DataError's (path, problem, hint) instead."""
    record = task.record
    try:
        raw = reader.read_sample(record, with_points=True)
        points, keep = preprocess_points(raw.points, settings)
        require_points(record.points_file, points)
    except DataError as problem:
        return str(problem.path), problem.problem, problem.hint
    stem = record.rgb.stem
    for sub in ("rgb", "xyz") + (("gt",) if raw.mask is not None else ()):
        (task.target / sub).mkdir(parents=True, exist_ok=True)
    rgb = np.where(keep[..., None], raw.rgb, 0).astype(np.uint8) if settings.remove_background else raw.rgb
    # zlib level 1: the same pixels, written about 5x faster than PIL's default level 6 (the larger cost per sample)
    Image.fromarray(rgb, mode="RGB").save(task.target / "rgb" / f"{stem}.png", compress_level=1)
    tifffile.imwrite(task.target / "xyz" / f"{stem}.tiff", points, photometric="rgb", metadata=None)
    if raw.mask is not None:
        Image.fromarray(raw.mask.astype(np.uint8) * 255, mode="L").save(task.target / "gt" / f"{stem}.png", compress_level=1)
    return None


def _one_thread_per_worker() -> None:
    """The pool supplies the parallelism: open3d's OpenMP loops (imported later) must not oversubscribe the cores."""
    os.environ["OMP_NUM_THREADS"] = "1"


def _process_star(args: tuple) -> tuple[str, str, str] | None:
    return _process(*args)


def _list_tasks(
    reader: LayoutReader, source: Path, classes: list[str], skipped: list[DataError] | None
) -> list[_Task]:
    tasks = []
    for class_name in classes:
        for split, folder_split in reader.splits.items():
            if not (source / class_name / folder_split).is_dir() and split == "validation":
                continue  # validation is optional
            for record in reader.list_records(source, class_name, split, skipped):
                tasks.append(_Task(record, Path(class_name) / split / (GOOD if split != "test" else record.defect_type)))
    return tasks


def preprocess_dataset(
    reader: LayoutReader,
    source: str | Path,
    settings: PreprocessingConfig,
    cache_root: str | Path,
    classes: list[str] | None = None,
    on_bad_sample: OnBadSample = "error",
    show_progress: bool = True,
) -> PreprocessedDataset:
    """The preprocessed copy of ``classes`` (default all) of ``source``, computed only if not cached."""
    source = Path(source).resolve()
    listing_problems: list[DataError] | None = [] if on_bad_sample == "skip" else None
    classes = list(classes) if classes else reader.list_classes(source, listing_problems)
    for class_name in classes:  # a class is one folder of the source, never a path to elsewhere
        try:
            safe_name(class_name)
        except ValueError as exc:
            raise ConfigError(f"scenario.classes: {class_name!r} {exc}") from None
    if Path(cache_root).resolve().is_relative_to(source):
        raise ConfigError(
            f"dataset.cache_dir: {cache_root} is inside the source folder {source}; "
            "preprocessing never writes into the source data: choose a cache folder outside it"
        )
    key = {
        "version": PREPROCESS_VERSION,
        "reader": reader.name,
        "source": str(source),
        "classes": classes,
        "settings": settings.fingerprint(),
        "on_bad_sample": on_bad_sample,
        "files": {name: folder_fingerprint(source / name) for name in classes},
    }
    cache_root = Path(cache_root)
    target = cache_root / f"preprocessed-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"
    if (target / MANIFEST).is_file():
        manifest = json.loads((target / MANIFEST).read_text())
        return PreprocessedDataset(target, manifest["skipped"], manifest["counts"], reused=True)

    # Listed only on a cache miss: the key already covers every file, and listing reads the test masks.
    tasks = _list_tasks(reader, source, classes, listing_problems)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staged = [_Task(task.record, path_within(staging, task.target)) for task in tasks]
        skipped = [str(problem) for problem in listing_problems or []]
        counts: dict[str, dict[str, int]] = {}
        for task, problem in zip(tasks, _run_tasks(staged, reader, settings, show_progress)):
            if problem is not None:
                error = DataError(*problem)
                if on_bad_sample == "error":
                    raise error
                skipped.append(str(error))
                continue
            class_counts = counts.setdefault(task.record.class_name, {})
            split = task.target.parts[1]
            class_counts[split] = class_counts.get(split, 0) + 1
        manifest = {"key": key, "skipped": skipped, "counts": counts}
        staging.mkdir(parents=True, exist_ok=True)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.rename(staging, target)
    except OSError:
        if not (target / MANIFEST).is_file():  # not a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PreprocessedDataset(target, skipped, counts, reused=False)


def _run_tasks(
    tasks: list[_Task], reader: LayoutReader, settings: PreprocessingConfig, show_progress: bool
) -> Iterator[tuple[str, str, str] | None]:
    """Each task's problem (None if written), in order, serially or from ``settings.workers`` processes.

    A generator, so that a caller that stops at the first bad sample stops the pool too.
    """
    workers = settings.workers or os.cpu_count() or 1
    arguments = [(task, reader, settings) for task in tasks]
    progress = dict(total=len(tasks), desc="preprocessing", unit="sample", disable=not show_progress)
    if workers == 1 or len(tasks) <= 1:
        yield from (_process(*args) for args in tqdm(arguments, **progress))
        return
    # spawn: open3d's thread pools must not be inherited half-initialised through fork
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_one_thread_per_worker) as pool:
        yield from tqdm(pool.imap(_process_star, arguments), **progress)
