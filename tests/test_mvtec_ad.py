"""MVTec AD (RGB only) through the reader family, on a generated fixture in its layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incad.data.check import check_dataset
from incad.data.readers.mvtec_ad import MVTecADReader
from incad.errors import ConfigError, DataError
from scenario_helpers import scenario_of


def _write_mvtec_ad(root: Path) -> Path:
    """bottle (RGB, 40 px) and grid (grey, 48 px): 3 train, test good 1 + broken_large 2 with masks."""
    rng = np.random.default_rng(0)
    for name, size, grey in (("bottle", 40, False), ("grid", 48, True)):
        shape = (size, size) if grey else (size, size, 3)
        for folder, count in (("train/good", 3), ("test/good", 1), ("test/broken_large", 2)):
            (root / name / folder).mkdir(parents=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / name / folder / f"{index:03d}.png")
        (root / name / "ground_truth" / "broken_large").mkdir(parents=True)
        for index in range(2):
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[5:10, 5 + index : 12] = 255
            Image.fromarray(mask).save(root / name / "ground_truth" / "broken_large" / f"{index:03d}_mask.png")
    (root / "license.txt").write_text("CC BY-NC-SA 4.0")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _write_mvtec_ad(tmp_path / "mvtec_ad")


def _config(root: Path, modality: str) -> dict:
    return {
        "dataset": {"name": "mvtec_ad", "root": str(root), "image_size": 32},
        "scenario": {"base": 1, "increment": 1, "steps": 1, "modality": modality},
        "learner": "reconstruction",
    }


def test_records_and_masks(root: Path) -> None:
    reader = MVTecADReader()
    assert reader.list_classes(root) == ["bottle", "grid"]
    test = reader.list_records(root, "grid", "test")
    assert [(r.defect_type, r.label, r.points_file) for r in test] == [("broken_large", 1, None)] * 2 + [("good", 0, None)]
    assert test[0].gt == root / "grid" / "ground_truth" / "broken_large" / "000_mask.png"
    assert len(reader.list_records(root, "bottle", "train")) == 3


def test_rgb_only_scenario(root: Path) -> None:
    scenario = scenario_of(_config(root, "rgb"))
    assert scenario.class_order == ["bottle", "grid"]
    sample = scenario.benchmark.test_stream[1].dataset[0]
    assert sample.image.shape == (3, 32, 32)  # the grey class comes out as RGB
    assert sample.depth is None and sample.xyz is None
    assert sample.label == 1 and sample.mask.sum() > 0


def test_depth_modalities_are_refused_with_the_key(root: Path) -> None:
    with pytest.raises(ConfigError, match="scenario.modality"):
        scenario_of(_config(root, "rgb+depth"))


def test_missing_mask_is_reported(root: Path) -> None:
    mask = root / "bottle" / "ground_truth" / "broken_large" / "001_mask.png"
    mask.unlink()
    with pytest.raises(DataError) as error:
        MVTecADReader().list_records(root, "bottle", "test")
    assert error.value.path == mask
    assert [problem.path for problem in check_dataset(root, MVTecADReader()).problems] == [mask]
