"""The Eyecandies reader on fixtures in the dataset's true file format (written by tests/eyecandies_format.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eyecandies_format import CANDY_HEIGHT, DEPTH_RANGE, TABLE_DISTANCE, scene, write_eyecandies
from incad.config import validate_config
from incad.data.datasets import prepare_dataset
from incad.data.dataset import AnomalyDetectionDataset
from incad.data.readers.base import load_xyz
from incad.data.readers.eyecandies import FOCAL_LENGTH, EyecandiesReader, back_project, read_depth_metres
from incad.data.preprocess import PreprocessingConfig, preprocess_dataset
from incad.errors import DataError
from incad.scenario import build_scenario

CLASSES = ["GummyBear", "CandyCane"]  # written unsorted: the reader sorts
SIZE = 48
# Eyecandies' scene scale: the table is a plane ~0.9 m away, the candy ~6 cm high.
EYECANDIES_SETTINGS = PreprocessingConfig(
    enabled=True, ransac_distance=0.004, plane_distance=0.01, border=4, grid_eps=0.05, dbscan_eps=0.05, dbscan_min_points=5, workers=1
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eyecandies(tmp_path_factory.mktemp("eyecandies"), CLASSES, size=SIZE)


def test_classes_keep_their_camelcase_names_in_alphabetical_order(root: Path) -> None:
    assert EyecandiesReader().list_classes(root) == ["CandyCane", "GummyBear"]


@pytest.mark.parametrize(("split", "count", "defective"), [("train", 3, 0), ("validation", 1, 0), ("test", 4, 2)])
def test_splits_and_test_labels_come_from_the_masks(root: Path, split: str, count: int, defective: int) -> None:
    records = EyecandiesReader().list_records(root, "CandyCane", split)
    assert len(records) == count
    assert sum(record.label for record in records) == defective
    for record in records:
        assert record.rgb.name.endswith("_image_4.png")
        assert record.defect_type == ("bad" if record.label else "good")
        assert (record.gt is not None) == (split == "test")


def test_depth_png_converts_to_metres(root: Path) -> None:
    data = root / "CandyCane" / "train" / "data"
    metres = read_depth_metres(data / "001_depth.png", data / "001_info_depth.yaml")
    expected, _ = scene(SIZE, 1, defective=False)
    quantum = (DEPTH_RANGE[1] - DEPTH_RANGE[0]) / 65535
    assert np.abs(metres - expected).max() <= quantum / 2 + 1e-9
    assert metres.max() == pytest.approx(TABLE_DISTANCE, abs=quantum)
    assert metres.min() == pytest.approx(TABLE_DISTANCE - CANDY_HEIGHT, abs=2e-3)


def test_back_projection_follows_the_pinhole_camera() -> None:
    depth = np.full((4, 6), 2.0)
    points = back_project(depth)
    assert points[2, 3].tolist() == [0.0, 0.0, 2.0]  # principal point at (W/2, H/2)
    assert points[0, 0, 0] == pytest.approx(-3 * 2.0 / FOCAL_LENGTH)
    assert points[0, 0, 1] == pytest.approx(-2 * 2.0 / FOCAL_LENGTH)


def test_light_picks_the_rgb_image(root: Path) -> None:
    samples = {
        light: AnomalyDetectionDataset(root, ["CandyCane"], "train", 32, {"CandyCane": 0}, reader=EyecandiesReader(light))[0]
        for light in (2, 4)
    }
    green = {light: samples[light].image[1].mean().item() for light in samples}
    assert green[2] == pytest.approx(40 / 255, abs=1e-3) and green[4] == pytest.approx(80 / 255, abs=1e-3)


def test_samples_have_an_organized_cloud_and_masks(root: Path) -> None:
    dataset = AnomalyDetectionDataset(root, ["CandyCane"], "test", 32, {"CandyCane": 5}, reader=EyecandiesReader())
    good, bad = dataset[0], dataset[3]
    assert bad.xyz.shape == (3, 32, 32) and bool(bad.valid.all())
    assert good.mask.sum() == 0 and bad.mask.sum() > 0 and bad.label == 1 and bad.object_id == 5
    assert bad.depth.max() == pytest.approx(1.0)  # the candy top is nearest


def test_missing_info_depth_yaml_names_the_file(root: Path, tmp_path: Path) -> None:
    copy = write_eyecandies(tmp_path / "copy", ["CandyCane"], size=16)
    info = copy / "CandyCane" / "train" / "data" / "000_info_depth.yaml"
    info.unlink()
    dataset = AnomalyDetectionDataset(copy, ["CandyCane"], "train", 16, {"CandyCane": 0}, reader=EyecandiesReader())
    with pytest.raises(DataError) as error:
        dataset[0]
    assert error.value.path == info


def test_eight_bit_depth_is_rejected(tmp_path: Path) -> None:
    copy = write_eyecandies(tmp_path / "copy", ["CandyCane"], size=16)
    depth = copy / "CandyCane" / "train" / "data" / "000_depth.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(depth)
    with pytest.raises(DataError, match="16-bit") as error:
        AnomalyDetectionDataset(copy, ["CandyCane"], "train", 16, {"CandyCane": 0}, reader=EyecandiesReader())[0]
    assert error.value.path == depth


def test_background_removal_keeps_the_candy_only(root: Path, tmp_path: Path) -> None:
    result = preprocess_dataset(EyecandiesReader(), root, EYECANDIES_SETTINGS, tmp_path / "cache", ["CandyCane"], show_progress=False)
    assert result.counts == {"CandyCane": {"train": 3, "validation": 1, "test": 4}}
    points = load_xyz(result.root / "CandyCane" / "train" / "good" / "xyz" / "000_image_4.tiff")
    depth, _ = scene(SIZE, 0, defective=False)
    candy = depth < TABLE_DISTANCE - EYECANDIES_SETTINGS.plane_distance - 1e-3  # clearly above the table
    kept = points.any(axis=-1)
    assert kept[candy].all()
    assert not kept[depth >= TABLE_DISTANCE - 1e-4].any()  # the table is gone
    assert sorted(p.name for p in (result.root / "CandyCane" / "test").iterdir()) == ["bad", "good"]


def test_scenario_reads_eyecandies_by_name(root: Path, tmp_path: Path) -> None:
    config = validate_config(
        {
            "dataset": {"name": "eyecandies", "root": str(root), "image_size": 32},
            "scenario": {"base": 1, "increment": 1, "steps": 1},
            "learner": "reconstruction",
            "output_dir": str(tmp_path),
        }
    )
    scenario = build_scenario(config, prepare_dataset(config.dataset))
    assert scenario.class_order == ["CandyCane", "GummyBear"]
    test_step0 = scenario.benchmark.test_stream[0].dataset
    assert len(test_step0) == 4


def test_prepared_run_reads_the_preprocessed_cache(root: Path, tmp_path: Path) -> None:
    config = validate_config(
        {
            "dataset": {
                "name": "eyecandies",
                "root": str(root),
                "image_size": 32,
                "cache_dir": str(tmp_path / "cache"),
                "preprocessing": EYECANDIES_SETTINGS.model_dump(),
            },
            "scenario": {"classes": ["CandyCane"], "base": 1},
            "learner": "reconstruction",
        }
    )
    prepared = prepare_dataset(config.dataset, ["CandyCane"], show_progress=False)
    assert prepared.root.parent == tmp_path / "cache" and prepared.reader.name == "mvtec3d"
    assert prepare_dataset(config.dataset, ["CandyCane"], show_progress=False).root == prepared.root
    scenario = build_scenario(config, prepared)
    test = scenario.benchmark.test_stream[0].dataset
    samples = [test[index] for index in range(len(test))]
    assert sorted(sample.label for sample in samples) == [0, 0, 1, 1]
    assert all(0.05 < sample.valid.float().mean() < 0.6 for sample in samples)  # the table is gone, the candy is not


def test_test_sample_without_mask_cannot_be_labelled(tmp_path: Path) -> None:
    copy = write_eyecandies(tmp_path / "copy", ["CandyCane"], size=16)
    mask = copy / "CandyCane" / "test_public" / "data" / "01_mask.png"
    mask.unlink()
    with pytest.raises(DataError, match="cannot be labelled") as error:
        EyecandiesReader().list_records(copy, "CandyCane", "test")
    assert error.value.path == mask
    skipped: list[DataError] = []
    assert len(EyecandiesReader().list_records(copy, "CandyCane", "test", skipped)) == 3
    assert [problem.path for problem in skipped] == [mask]
