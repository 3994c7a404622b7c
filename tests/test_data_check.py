"""Every kind of bad file: ``incad data check`` lists it with its path, a run stops on it or skips and reports it.

The bad files are damaged copies of the tiny synthetic dataset (conftest) in
tmp_path; the user's (and the real subset's) files are never touched.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from incad.cli import main
from incad.config import validate_config
from conftest import TINY_SYNTHETIC
from incad.data.check import check_dataset
from incad.data.synthetic import DEFECT_TYPES
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.readers.mvtec3d import MVTEC3D
from incad.errors import DataError
from incad.runner import run_experiment
from scenario_helpers import scenario_of

CLASS = "dome"
SPLITS = ("train", "validation", "test")


@pytest.fixture
def pristine(tiny_dataset: Path) -> Path:
    return tiny_dataset


@pytest.fixture
def root(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def _truncated_png(root: Path) -> Path:
    path = root / CLASS / "train/good/rgb/001.png"
    path.write_bytes(path.read_bytes()[:100])
    return path


def _corrupt_mask_png(root: Path) -> Path:
    path = root / CLASS / "test/dent/gt/000.png"
    path.write_bytes(b"\x89PNG not really")
    return path


def _truncated_tiff(root: Path) -> Path:
    path = root / CLASS / "train/good/xyz/001.tiff"
    path.write_bytes(path.read_bytes()[:2000])
    return path


def _decompression_bomb_png(root: Path) -> Path:
    """A PNG whose header claims 14000 x 14000 pixels (196 MP, over Pillow's limit); a few bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 14000, 14000, 8, 2, 0, 0, 0)  # 8-bit RGB
    path = root / CLASS / "train/good/rgb/001.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _rgb_xyz_size_mismatch(root: Path) -> Path:
    path = root / CLASS / "train/good/xyz/001.tiff"
    tifffile.imwrite(path, np.full((30, 32, 3), 0.5, dtype=np.float32), photometric="rgb")
    return path


def _rgb_gt_size_mismatch(root: Path) -> Path:
    path = root / CLASS / "test/stain/gt/000.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(path)
    return path


def _set_points(root: Path, value: float, everywhere: bool) -> Path:
    path = root / CLASS / "train/good/xyz/001.tiff"
    points = tifffile.imread(path)
    if everywhere:
        points[:] = value
    else:
        points[4, 5] = value
    tifffile.imwrite(path, points, photometric="rgb")
    return path


def _defect_without_mask(root: Path) -> Path:
    path = root / CLASS / "test/crack/gt/000.png"
    path.unlink()
    return path


DAMAGE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated-png": (_truncated_png, "cannot be read as an image"),
    "corrupt-mask-png": (_corrupt_mask_png, "cannot be read as a mask"),
    "truncated-tiff": (_truncated_tiff, "cannot be read as a TIFF"),
    "decompression-bomb-png": (_decompression_bomb_png, "decompression bomb"),
    "rgb-xyz-size-mismatch": (_rgb_xyz_size_mismatch, "same size"),
    "rgb-gt-size-mismatch": (_rgb_gt_size_mismatch, "same size"),
    "nan-in-xyz": (lambda root: _set_points(root, np.nan, everywhere=False), "NaN or infinite"),
    "inf-in-xyz": (lambda root: _set_points(root, np.inf, everywhere=False), "NaN or infinite"),
    "all-zero-xyz": (lambda root: _set_points(root, 0.0, everywhere=True), "no point at all"),
    "defect-without-mask": (_defect_without_mask, "no ground-truth mask"),
}


def _read_everything(root: Path, on_bad_sample: str = "error") -> list[AnomalyDetectionDataset]:
    datasets = [AnomalyDetectionDataset(root, [CLASS], split, 32, {CLASS: 0}, on_bad_sample=on_bad_sample) for split in SPLITS]
    for dataset in datasets:
        [dataset[index] for index in range(len(dataset))]
    return datasets


def test_pristine_dataset_is_clean(pristine: Path) -> None:
    report = check_dataset(pristine, MVTEC3D)
    assert report.clean, report.format()
    config = TINY_SYNTHETIC
    test_count = config.test_good_per_class + len(DEFECT_TYPES) * config.test_defect_per_class
    assert report.counts[CLASS] == {"train": config.train_per_class, "validation": config.validation_per_class, "test": test_count}


@pytest.mark.parametrize("case", DAMAGE)
def test_check_lists_the_bad_file(root: Path, case: str) -> None:
    damage, problem = DAMAGE[case]
    bad = damage(root)
    report = check_dataset(root, MVTEC3D)
    assert [error.path for error in report.problems] == [bad]
    assert problem in str(report.problems[0])


@pytest.mark.parametrize("case", DAMAGE)
def test_a_run_stops_with_an_error_naming_the_file(root: Path, case: str) -> None:
    damage, problem = DAMAGE[case]
    bad = damage(root)
    with pytest.raises(DataError, match=problem) as error:
        _read_everything(root)
    assert error.value.path == bad and str(bad) in str(error.value)


@pytest.mark.parametrize("case", DAMAGE)
def test_skip_leaves_the_sample_out_and_reports_it(root: Path, pristine: Path, case: str) -> None:
    damage, problem = DAMAGE[case]
    bad = damage(root)
    datasets = _read_everything(root, on_bad_sample="skip")
    skipped = [error for dataset in datasets for error in dataset.skipped]
    assert [error.path for error in skipped] == [bad] and problem in str(skipped[0])
    total = sum(len(dataset) for dataset in datasets)
    assert total == sum(len(dataset) for dataset in _read_everything(pristine)) - 1


def test_user_files_are_never_modified(root: Path) -> None:
    _defect_without_mask(root)
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in root.rglob("*") if path.is_file()}
    check_dataset(root, MVTEC3D)
    _read_everything(root, on_bad_sample="skip")
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in root.rglob("*") if path.is_file()} == before


def _run_config(root: Path, tmp_path: Path, **dataset: object) -> dict:
    return {
        "name": "bad-files",
        "output_dir": str(tmp_path / "outputs"),
        "dataset": {"name": "folder", "root": str(root), "image_size": 32, **dataset},
        "scenario": {"classes": ["dome", "ring"], "base": 1, "increment": 1, "steps": 1, "modality": "rgb+depth"},
        "learner": {"name": "reconstruction", "hidden_dim": 16, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "feedforward_dim": 32},
        "training": {"epochs": 1, "batch_size": 4},
        "evaluation": {"batch_size": 8},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
    }


def test_empty_class_folder_stops_or_is_skipped(root: Path, tmp_path: Path) -> None:
    empty = root / "zz_empty"
    empty.mkdir()
    assert [error.path for error in check_dataset(root, MVTEC3D).problems] == [empty]
    with pytest.raises(DataError, match="without a train/ or test/") as error:
        scenario_of(_run_config(root, tmp_path))
    assert error.value.path == empty
    scenario = scenario_of(_run_config(root, tmp_path, on_bad_sample="skip"))
    assert scenario.class_order == ["dome", "ring"]
    assert len(scenario.skipped) == 1 and str(empty) in scenario.skipped[0]


def test_skipped_samples_are_reported_in_the_results_and_mlflow(root: Path, tmp_path: Path) -> None:
    bad = _truncated_png(root)
    result = run_experiment(validate_config(_run_config(root, tmp_path, on_bad_sample="skip")), show_progress=False)
    listed = (result.output_dir / "skipped_samples.txt").read_text().splitlines()
    assert len(listed) == 1 and str(bad) in listed[0]
    assert json.loads((result.output_dir / "results.json").read_text())["skipped_samples"] == listed
    artifacts = [item.path for item in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").list_artifacts(result.mlflow_run_id)]
    assert "skipped_samples.txt" in artifacts


def test_cli_check_exit_codes_and_report(root: Path, pristine: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", str(pristine)]) == 0
    assert "No problem found" in capsys.readouterr().out
    bad = [_truncated_png(root), _nan(root), _defect_without_mask(root)]
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert all(str(path) in out for path in bad)


def test_cli_check_goes_on_after_a_decompression_bomb(root: Path, capsys: pytest.CaptureFixture) -> None:
    bad = [_decompression_bomb_png(root), _nan(root)]  # the bomb in the first class, another bad file in a later one
    assert main(["data", "check", str(root)]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  - ")]
    assert len(problems) == 2
    assert str(bad[0]) in problems[0] and "decompression bomb" in problems[0]
    assert str(bad[1]) in problems[1]


def _nan(root: Path) -> Path:
    path = root / "ring/test/good/xyz/000.tiff"
    points = tifffile.imread(path)
    points[1, 1] = np.nan
    tifffile.imwrite(path, points, photometric="rgb")
    return path


def test_cli_prepare_prints_counts(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(_run_config(root, tmp_path)))
    assert main(["data", "prepare", str(scenario), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Dataset ready in {root}" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert lines["class"] == ["train", "validation", "test"] and lines["dome"] == ["6", "1", "9"] and "brick" not in lines
