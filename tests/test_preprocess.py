"""BTF-style preprocessing and its cache, on real MVTec 3D-AD files (downsampled copies, to stay fast)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from incad.data.preprocess import MANIFEST, PreprocessingConfig, border_mask, fill_holes, preprocess_dataset
from incad.data.readers.base import load_mask, load_xyz
from incad.data.readers.mvtec3d import MVTEC3D
from incad.errors import DataError

CLASS = "cable_gland"
STEP = 4  # 400 px -> 100 px: 16x fewer points for DBSCAN
# BTF's settings, with the DBSCAN radius scaled to the 4x coarser point spacing.
SETTINGS = PreprocessingConfig(enabled=True, dbscan_eps=0.012, dbscan_min_points=10, workers=1)

def _copy_downsampled(source_folder: Path, target_folder: Path, stem: str) -> None:
    for sub in ("rgb", "xyz", "gt"):
        files = sorted((source_folder / sub).glob(f"{stem}.*"))
        if not files:
            continue
        (target_folder / sub).mkdir(parents=True, exist_ok=True)
        if sub == "xyz":
            tifffile.imwrite(target_folder / sub / files[0].name, np.ascontiguousarray(tifffile.imread(files[0])[::STEP, ::STEP]))
        else:
            with Image.open(files[0]) as image:
                Image.fromarray(np.asarray(image)[::STEP, ::STEP]).save(target_folder / sub / files[0].name)


@pytest.fixture(scope="module")
def source(real_subset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two train samples, one validation sample and a good and a cut test sample of cable_gland, at 100 px."""
    root = tmp_path_factory.mktemp("mini") / "data"
    real = real_subset_root / CLASS
    for split, defect, stems in (("train", "good", ["000", "001"]), ("validation", "good", ["000"]), ("test", "good", ["000"]), ("test", "cut", ["000"])):
        for stem in stems:
            _copy_downsampled(real / split / defect, root / CLASS / split / defect, stem)
    return root


@pytest.fixture(scope="module")
def prepared(source: Path, tmp_path_factory: pytest.TempPathFactory):
    return preprocess_dataset(MVTEC3D, source, SETTINGS, tmp_path_factory.mktemp("cache"), show_progress=False)


def _plane_distance(points: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Distance of every point to the least-squares plane through the border points."""
    ref = points[border]
    centre = ref.mean(axis=0)
    normal = np.linalg.svd(ref - centre)[2][-1]
    return np.abs((points - centre) @ normal)


def test_background_plane_is_removed_and_object_kept(source: Path, prepared) -> None:
    original = load_xyz(source / CLASS / "train" / "good" / "xyz" / "000.tiff")
    processed = load_xyz(prepared.root / CLASS / "train" / "good" / "xyz" / "000.tiff")
    valid, kept = original.any(axis=-1), processed.any(axis=-1)
    border = border_mask(valid.shape, 3) & valid
    distance = _plane_distance(original.astype(np.float64), border)
    assert not (kept & border).any()  # the border strips are background
    assert (distance[kept] > SETTINGS.plane_distance * 0.8).all()  # nothing on the plane survives
    assert 0.05 < kept.sum() / valid.sum() < 0.6  # the cable gland is kept, most of the scene is not
    assert np.array_equal(processed[kept], original[kept])  # kept points are not moved
    rgb = np.asarray(Image.open(prepared.root / CLASS / "train" / "good" / "rgb" / "000.png"))
    assert not rgb[~kept].any()  # removed in RGB too


def test_defects_survive_preprocessing(source: Path, prepared) -> None:
    """The defect is on the object, so nearly all of its pixels that had a point keep it."""
    mask = load_mask(source / CLASS / "test" / "cut" / "gt" / "000.png")
    original = load_xyz(source / CLASS / "test" / "cut" / "xyz" / "000.tiff").any(axis=-1)
    kept = load_xyz(prepared.root / CLASS / "test" / "cut" / "xyz" / "000.tiff").any(axis=-1)
    assert mask.any()
    assert kept[mask & original].mean() > 0.9
    assert np.array_equal(load_mask(prepared.root / CLASS / "test" / "cut" / "gt" / "000.png"), mask)


def test_cache_layout_and_counts(prepared) -> None:
    assert prepared.counts == {CLASS: {"train": 2, "validation": 1, "test": 2}}
    assert len(MVTEC3D.list_records(prepared.root, CLASS, "test")) == 2
    manifest = json.loads((prepared.root / MANIFEST).read_text())
    assert manifest["key"]["settings"]["plane_distance"] == SETTINGS.plane_distance


def _digest(root: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()


def test_second_run_reuses_the_cache_and_changes_make_new_entries(source: Path, tmp_path: Path) -> None:
    before = _digest(source)
    first = preprocess_dataset(MVTEC3D, source, SETTINGS, tmp_path, show_progress=False)
    again = preprocess_dataset(MVTEC3D, source, SETTINGS, tmp_path, show_progress=False)
    assert not first.reused and again.reused and again.root == first.root
    changed = preprocess_dataset(MVTEC3D, source, SETTINGS.model_copy(update={"plane_distance": 0.007}), tmp_path, show_progress=False)
    assert not changed.reused and changed.root != first.root
    assert preprocess_dataset(MVTEC3D, source, SETTINGS.model_copy(update={"workers": 3}), tmp_path, show_progress=False).reused
    touched = source / CLASS / "train" / "good" / "rgb" / "001.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert preprocess_dataset(MVTEC3D, source, SETTINGS, tmp_path, show_progress=False).root not in (first.root, changed.root)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _digest(source) == before  # the user's files are only read
    assert not list(tmp_path.glob(".*partial*"))  # no staging folder left behind


def test_process_pool_gives_the_serial_result(source: Path, prepared, tmp_path: Path) -> None:
    parallel = preprocess_dataset(MVTEC3D, source, SETTINGS.model_copy(update={"workers": 2}), tmp_path, show_progress=False)
    for serial_file in sorted(prepared.root.rglob("*.tiff")):
        parallel_file = parallel.root / serial_file.relative_to(prepared.root)
        assert np.array_equal(tifffile.imread(serial_file), tifffile.imread(parallel_file))


def test_fill_holes_uses_the_mean_of_valid_neighbours() -> None:
    points = np.ones((7, 7, 3), dtype=np.float32)
    points[..., 2] = np.arange(7, dtype=np.float32)[None, :] + 1  # z grows to the right
    points[3, 3] = 0  # one missing point
    points[:, 6] = 0  # a missing column at the edge
    filled = fill_holes(points, passes=1)
    assert filled[3, 3, 2] == pytest.approx(4.0)  # mean of columns 2..4 = 3, 4, 5
    assert filled[3, 6, 2] == pytest.approx(6.0)  # only column 5 (z = 6) is a valid neighbour
    assert fill_holes(np.zeros((4, 4, 3), np.float32), passes=3).sum() == 0  # nothing to fill from


def test_hole_filling_in_the_pipeline_fills_small_holes(source: Path, tmp_path: Path) -> None:
    settings = SETTINGS.model_copy(update={"fill_holes": True})
    result = preprocess_dataset(MVTEC3D, source, settings, tmp_path, show_progress=False)
    filled = load_xyz(result.root / CLASS / "train" / "good" / "xyz" / "000.tiff").any(axis=-1)
    reference = preprocess_dataset(MVTEC3D, source, SETTINGS, tmp_path, show_progress=False)
    kept = load_xyz(reference.root / CLASS / "train" / "good" / "xyz" / "000.tiff").any(axis=-1)
    assert (filled | ~kept).all() and filled.sum() > kept.sum()


def test_bad_sample_stops_preprocessing_or_is_skipped(source: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(source, tmp_path / "copy"))
    bad = copy / CLASS / "train" / "good" / "xyz" / "001.tiff"
    points = tifffile.imread(bad)
    points[0, 0] = np.nan
    tifffile.imwrite(bad, points)
    with pytest.raises(DataError, match="NaN") as error:
        preprocess_dataset(MVTEC3D, copy, SETTINGS, tmp_path / "cache", show_progress=False)
    assert error.value.path == bad
    skipped = preprocess_dataset(MVTEC3D, copy, SETTINGS, tmp_path / "cache", on_bad_sample="skip", show_progress=False)
    assert skipped.counts[CLASS]["train"] == 1
    assert len(skipped.skipped) == 1 and str(bad) in skipped.skipped[0]
