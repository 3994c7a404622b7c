"""VisA (RGB only, official split_csv/1cls.csv) on a generated fixture in its layout, and CDAD's VisA split CSVs on it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incad.data.check import check_dataset
from incad.data.readers.visa import VisAReader
from incad.errors import ConfigError, DataError
from scenario_helpers import scenario_of
from split_file_formats import records_of, write_split_csv

CLASSES = ["candle", "pcb1"]


def write_visa(root: Path) -> Path:
    """Per class 5 normal JPGs (3 train, 2 test) and 2 anomalies with PNG masks (values 255 and 1), and 1cls.csv."""
    rng = np.random.default_rng(0)
    rows = []
    for name, size in zip(CLASSES, (40, 48)):
        images, masks = root / name / "Data" / "Images", root / name / "Data" / "Masks" / "Anomaly"
        for folder in (images / "Normal", images / "Anomaly", masks):
            folder.mkdir(parents=True)
        for index in range(5):
            path = images / "Normal" / f"{index:04d}.JPG"
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(path, format="JPEG")
            rows.append([name, "train" if index < 3 else "test", "normal", path.relative_to(root).as_posix(), ""])
        for index, value in enumerate((255, 1)):
            path = images / "Anomaly" / f"{index:03d}.JPG"
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(path, format="JPEG")
            mask = np.zeros((size, size + 8), dtype=np.uint8)
            mask[4:12, 6 + index : 14] = value
            Image.fromarray(mask).save(masks / f"{index:03d}.png")
            rows.append([name, "test", "anomaly", path.relative_to(root).as_posix(), (masks / f"{index:03d}.png").relative_to(root).as_posix()])
    (root / "split_csv").mkdir()
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_visa(tmp_path / "VisA")


def _config(root: Path, modality: str = "rgb") -> dict:
    return {
        "dataset": {"name": "visa", "root": str(root), "image_size": 32},
        "scenario": {"classes": CLASSES, "base": 1, "increment": 1, "steps": 1, "modality": modality},
        "learner": "reconstruction",
    }


def test_records_follow_the_official_split(root: Path) -> None:
    reader = VisAReader()
    assert reader.list_classes(root) == CLASSES  # split_csv/ is no class
    train = reader.list_records(root, "candle", "train")
    assert [(r.rgb.name, r.label, r.gt) for r in train] == [(f"{i:04d}.JPG", 0, None) for i in range(3)]
    test = reader.list_records(root, "pcb1", "test")
    assert [(r.defect_type, r.label) for r in test] == [("anomaly", 1)] * 2 + [("good", 0)] * 2
    assert test[0].gt == root / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert check_dataset(root, reader).clean


def test_rgb_only_scenario(root: Path) -> None:
    scenario = scenario_of(_config(root))
    assert scenario.class_order == CLASSES and scenario.step_classes == [["candle"], ["pcb1"]]
    test = scenario.benchmark.test_stream[1].dataset
    samples = [test[index] for index in range(len(test))]
    assert [s.label for s in samples] == [1, 1, 0, 0]
    assert samples[0].image.shape == (3, 32, 32) and samples[0].depth is None
    assert all(s.mask.sum() > 0 for s in samples[:2]) and all(s.mask.sum() == 0 for s in samples[2:])  # mask value 1 counts too


def test_depth_modalities_are_refused_with_the_key(root: Path) -> None:
    with pytest.raises(ConfigError, match="scenario.modality"):
        scenario_of(_config(root, "rgb+depth"))


def test_missing_split_file_is_named(root: Path) -> None:
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DataError) as error:
        VisAReader().list_records(root, "candle", "train")
    assert error.value.path == root / "split_csv" / "1cls.csv"


def test_missing_mask_is_reported(root: Path) -> None:
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    assert [problem.path for problem in check_dataset(root, VisAReader()).problems] == [mask]


def test_cdad_visa_csvs_round_trip(root: Path, tmp_path: Path) -> None:
    """CDAD's data/VisA/<setting>/*.csv: one CSV per step in VisA's split format."""
    reader = VisAReader()
    for step, name in enumerate(CLASSES, start=1):
        rows = [("train", r) for r in records_of(reader, root, [name], "train")] + [("test", r) for r in records_of(reader, root, [name], "test")]
        write_split_csv(tmp_path / "splits" / f"{step}.csv", rows, root)
    raw = _config(root)
    raw["scenario"] = {"modality": "rgb", "split_files": {"folder": str(tmp_path / "splits")}}
    from_files, from_yaml = scenario_of(raw), scenario_of(_config(root))
    assert from_files.step_classes == from_yaml.step_classes
    for stream in ("train_stream", "test_stream"):
        for a, b in zip(getattr(from_files.benchmark, stream), getattr(from_yaml.benchmark, stream)):
            assert [(s.path, s.label, s.object_id, float(s.mask.sum())) for s in a.dataset] == [
                (s.path, s.label, s.object_id, float(s.mask.sum())) for s in b.dataset
            ]
