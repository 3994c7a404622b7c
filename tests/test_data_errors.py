"""Every kind of bad input gives a DataError that names the file at fault.

The bad files are damaged copies of a tiny synthetic dataset in tmp_path, so
these tests need no real data and never touch a user's files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from incad.data.dataset import AnomalyDetectionDataset
from incad.data.readers.base import load_mask, load_rgb, load_xyz
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.synthetic import SyntheticConfig, generate
from incad.errors import DataError

CONFIG = SyntheticConfig(
    num_classes=1, image_size=32, train_per_class=2, validation_per_class=1, test_good_per_class=1, test_defect_per_class=1
)
CLASS = "dome"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(CONFIG, tmp_path_factory.mktemp("pristine") / "data")


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the dataset that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _first_train_sample(root: Path) -> AnomalyDetectionDataset:
    return AnomalyDetectionDataset(root, [CLASS], "train", 32, {CLASS: 0})


def _assert_names(error: pytest.ExceptionInfo[DataError], path: Path) -> None:
    assert error.value.path == path
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)  # one paragraph


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="Expected") as error:
        MVTEC3D.list_classes(missing)
    _assert_names(error, missing)


def test_missing_split_folder(root: Path) -> None:
    shutil.rmtree(root / CLASS / "validation")
    with pytest.raises(DataError, match="validation split") as error:
        AnomalyDetectionDataset(root, [CLASS], "validation", 32, {CLASS: 0})
    _assert_names(error, root / CLASS / "validation")


def test_rgb_xyz_size_mismatch(root: Path) -> None:
    xyz = root / CLASS / "train/good/xyz/000.tiff"
    tifffile.imwrite(xyz, np.full((40, 36, 3), 0.5, dtype=np.float32), photometric="rgb")
    with pytest.raises(DataError, match="36x40") as error:
        _first_train_sample(root)[0]
    _assert_names(error, xyz)
    assert str(root / CLASS / "train/good/rgb/000.png") in str(error.value) and "32x32" in str(error.value)


def test_rgb_gt_size_mismatch(root: Path) -> None:
    gt = root / CLASS / "test/stain/gt/000.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(gt)
    dataset = AnomalyDetectionDataset(root, [CLASS], "test", 32, {CLASS: 0})
    index = next(i for i, record in enumerate(dataset.records) if record.gt == gt)
    with pytest.raises(DataError, match="same size") as error:
        dataset[index]
    _assert_names(error, gt)


def test_truncated_png(root: Path) -> None:
    rgb = root / CLASS / "train/good/rgb/000.png"
    rgb.write_bytes(rgb.read_bytes()[:200])
    with pytest.raises(DataError, match="Re-export or remove") as error:
        _first_train_sample(root)[0]
    _assert_names(error, rgb)


def test_corrupt_mask_png(root: Path) -> None:
    gt = root / CLASS / "test/dent/gt/000.png"
    gt.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="Re-export or remove") as error:
        load_mask(gt)
    _assert_names(error, gt)


@pytest.mark.parametrize("keep_bytes", [8, 2000], ids=["header-only", "truncated-data"])
def test_corrupt_tiff(root: Path, keep_bytes: int) -> None:
    xyz = root / CLASS / "train/good/xyz/000.tiff"
    xyz.write_bytes(xyz.read_bytes()[:keep_bytes])
    with pytest.raises(DataError, match="Re-export or remove") as error:
        _first_train_sample(root)[0]
    _assert_names(error, xyz)


def test_nan_in_xyz(root: Path) -> None:
    xyz = root / CLASS / "train/good/xyz/001.tiff"
    points = tifffile.imread(xyz)
    points[3, 4] = np.nan
    points[5, 6, 2] = np.inf
    tifffile.imwrite(xyz, points, photometric="rgb")
    with pytest.raises(DataError, match="2 pixels with NaN or infinite") as error:
        _first_train_sample(root)[1]
    _assert_names(error, xyz)


def test_xyz_that_is_not_h_w_3(root: Path) -> None:
    xyz = root / CLASS / "train/good/xyz/000.tiff"
    tifffile.imwrite(xyz, np.ones((32, 32), dtype=np.float32))
    with pytest.raises(DataError, match="H x W x 3") as error:
        load_xyz(xyz)
    _assert_names(error, xyz)


def test_defect_sample_without_mask(root: Path) -> None:
    gt = root / CLASS / "test/crack/gt/000.png"
    gt.unlink()
    with pytest.raises(DataError, match="no ground-truth mask") as error:
        MVTEC3D.list_records(root, CLASS, "test")
    _assert_names(error, gt)


def test_rgb_without_point_cloud(root: Path) -> None:
    xyz = root / CLASS / "train/good/xyz/001.tiff"
    xyz.unlink()
    with pytest.raises(DataError, match="no point cloud") as error:
        MVTEC3D.list_records(root, CLASS, "train")
    _assert_names(error, xyz)


def test_missing_file_passed_to_a_loader(tmp_path: Path) -> None:
    missing = tmp_path / "000.png"
    with pytest.raises(DataError, match="missing") as error:
        load_rgb(missing)
    _assert_names(error, missing)


def test_user_files_are_only_read(root: Path) -> None:
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*")}
    dataset = AnomalyDetectionDataset(root, [CLASS], "test", 16, {CLASS: 0})
    [dataset[i] for i in range(len(dataset))]
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == before
