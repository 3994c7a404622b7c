"""scenario.split_files: each published format round-trips into the benchmark of the equivalent YAML scenario."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from incad.config import validate_config
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.split_files import read_split_files
from incad.errors import ConfigError, DataError
from incad.scenario import Scenario
from scenario_helpers import scenario_of
from split_file_formats import records_of, write_meta, write_split_csv

STEPS = [["dome", "ring"], ["brick"], ["wave"]]


def _yaml_config(tiny_run_config: dict, modality: str) -> dict:
    raw = copy.deepcopy(tiny_run_config)
    raw["scenario"]["modality"] = modality
    return raw


def _split_config(tiny_run_config: dict, folder: Path, modality: str, **options) -> dict:
    raw = copy.deepcopy(tiny_run_config)
    raw["scenario"] = {"modality": modality, "split_files": {"folder": str(folder), **options}}
    return raw


def _contents(scenario: Scenario) -> list:
    """Every experience's samples, field by field (tensors summed), in order."""
    streams = []
    for stream in (scenario.benchmark.train_stream, scenario.benchmark.test_stream):
        for experience in stream:
            samples = [experience.dataset[index] for index in range(len(experience.dataset))]
            streams.append(
                [
                    (s.path, s.label, s.object_id, s.defect_type, float(s.image.sum()), float(s.mask.sum()), None if s.xyz is None else float(s.xyz.sum()))
                    for s in samples
                ]
            )
    return streams


def _assert_same_benchmark(split_scenario: Scenario, yaml_scenario: Scenario) -> None:
    assert split_scenario.class_order == yaml_scenario.class_order
    assert split_scenario.step_classes == yaml_scenario.step_classes == STEPS
    assert _contents(split_scenario) == _contents(yaml_scenario)


def write_ib_iumad(root: Path, folder: Path) -> Path:
    """IB-IUMAD: one JSON per step (train and test rows, the split in the path), with filename_xyz."""
    for step, classes in enumerate(STEPS):
        records = records_of(MVTEC3D, root, classes, "train") + records_of(MVTEC3D, root, classes, "test")
        write_meta(folder / f"c{step + 2}.json", records, root, with_xyz=True)
    return folder


def write_cdad_json(root: Path, folder: Path) -> Path:
    """CDAD's {train,test}_<k>.json; test files are cumulative (every class seen so far)."""
    for step, classes in enumerate(STEPS, start=1):
        seen = [name for group in STEPS[:step] for name in group]
        write_meta(folder / f"train_{step}.json", records_of(MVTEC3D, root, classes, "train"), root)
        write_meta(folder / f"test_{step}.json", records_of(MVTEC3D, root, seen, "test"), root)
    return folder


def write_cdad_csv(root: Path, folder: Path) -> Path:
    """CDAD's VisA CSVs: one per step in VisA's split CSV format."""
    for step, classes in enumerate(STEPS, start=1):
        rows = [("train", r) for r in records_of(MVTEC3D, root, classes, "train")] + [("test", r) for r in records_of(MVTEC3D, root, classes, "test")]
        write_split_csv(folder / f"{step}.csv", rows, root)
    return folder


@pytest.mark.parametrize(
    ("writer", "expected_format", "modality"),
    [(write_ib_iumad, "ib_iumad", "rgb+depth"), (write_cdad_json, "cdad_json", "rgb"), (write_cdad_csv, "cdad_csv", "rgb")],
)
def test_each_format_round_trips_into_the_yaml_benchmark(tiny_dataset, tiny_run_config, tmp_path, writer, expected_format, modality):
    folder = writer(tiny_dataset, tmp_path / "splits")
    plan = read_split_files(folder)
    assert plan.format == expected_format
    split_scenario = scenario_of(_split_config(tiny_run_config, folder, modality))
    _assert_same_benchmark(split_scenario, scenario_of(_yaml_config(tiny_run_config, modality)))


def test_named_format_and_folder_relative_to_the_dataset_root(tiny_dataset, tiny_run_config, tmp_path):
    folder = write_cdad_json(tiny_dataset, tmp_path / "splits")
    relative = Path(os.path.relpath(folder, tiny_dataset))  # from the dataset root to the folder
    split_scenario = scenario_of(_split_config(tiny_run_config, relative, "rgb", format="cdad_json"))
    _assert_same_benchmark(split_scenario, scenario_of(_yaml_config(tiny_run_config, "rgb")))


def test_step_order_follows_the_steps_key(tiny_dataset, tiny_run_config, tmp_path):
    folder = write_cdad_json(tiny_dataset, tmp_path / "splits")
    for name in ("train", "test"):  # step keys whose natural order is not the protocol's
        (folder / f"{name}_1.json").rename(folder / f"{name}_base.json")
    plan = read_split_files(folder, steps=["base", "2", "3"])
    assert plan.step_classes == STEPS
    with pytest.raises(DataError, match="tests class 'dome', which no step up to '2' trains"):
        read_split_files(folder)  # natural order puts "2" first


def test_missing_files_are_one_error_listing_all(tiny_dataset, tiny_run_config, tmp_path):
    folder = write_ib_iumad(tiny_dataset, tmp_path / "splits")
    moved = tmp_path / "moved"
    moved.mkdir()
    rgb = next((tiny_dataset / "ring" / "train" / "good" / "rgb").glob("*.png"))
    xyz = next((tiny_dataset / "wave" / "test" / "good" / "xyz").glob("*.tiff"))
    for path in (rgb, xyz):
        path.rename(moved / path.name)
    try:
        with pytest.raises(DataError) as error:
            scenario_of(_split_config(tiny_run_config, folder, "rgb+depth"))
    finally:
        (moved / rgb.name).rename(rgb)
        (moved / xyz.name).rename(xyz)
    message = str(error.value)
    assert "2 file(s) missing" in message and str(rgb) in message and str(xyz) in message


def test_rows_that_are_no_sample_of_the_layout_are_named(tiny_dataset, tiny_run_config, tmp_path):
    folder = write_cdad_csv(tiny_dataset, tmp_path / "splits")
    text = (folder / "3.csv").read_text().replace("wave,test,normal", "wave,test,anomaly", 1)
    (folder / "3.csv").write_text(text)
    with pytest.raises(DataError, match="matching 1 split-file row"):
        scenario_of(_split_config(tiny_run_config, folder, "rgb"))


def test_split_files_replace_the_b_i_s_keys(tiny_run_config, tmp_path):
    raw = _split_config(tiny_run_config, tmp_path, "rgb")
    raw["scenario"]["base"] = 2
    with pytest.raises(ConfigError, match="remove scenario.base"):
        validate_config(raw)
    del raw["scenario"]["base"], raw["scenario"]["split_files"]
    with pytest.raises(ConfigError, match="scenario.base is required"):
        validate_config(raw)


def test_a_folder_without_split_files(tmp_path):
    with pytest.raises(DataError, match="holds no split file"):
        read_split_files(tmp_path)
