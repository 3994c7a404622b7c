"""Hostile or careless names and shapes: nothing escapes its folder, nothing is deleted or rewritten that the run did not write.

The escape tests snapshot the whole temporary tree (every path and every
file's sha256) before and after, so a write anywhere in it is seen.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from incad.cli import main
from incad.config import validate_config
from incad.data.readers.mvtec3d import MVTEC3D
from incad.data.preprocess import PreprocessingConfig, preprocess_dataset
from incad.errors import ConfigError
from incad.run_folder import MANIFEST_FILE
from incad.runner import run_experiment

# Fast settings for the 64 px synthetic point clouds (the background is a plane, as in MVTec 3D-AD).
PREPROCESSING = PreprocessingConfig(enabled=True, dbscan_eps=0.02, dbscan_min_points=5, ransac_iterations=50, workers=1)


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> the sha256 of its bytes (``dir`` for folders)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def workspace(tmp_path: Path, tiny_run_config: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scenario YAML in ``tmp_path/a/b/work`` (the working directory) with its outputs in ``work/outputs``."""
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    raw = copy.deepcopy(tiny_run_config)
    raw["output_dir"] = "outputs"
    (work / "scenario.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("name", ["../../victim", "../outputs-sibling", "..", "/ABSOLUTE", ".hidden", "a/b"])
def test_a_run_name_that_leaves_outputs_writes_nothing(tmp_path, workspace, capsys, name):
    name = name.replace("/ABSOLUTE", str(tmp_path / "victim"))
    before = tree(tmp_path)
    assert main(["run", "scenario.yaml", "--no-progress", "--set", f"name={name}"]) == 2
    err = capsys.readouterr().err
    assert "'name': must be one folder name" in err and repr(name) in err and "Traceback" not in err
    assert tree(tmp_path) == before


def test_a_registry_model_name_with_a_slash_is_refused(tiny_run_config):
    tiny_run_config["tracking"]["registry"] = {"enabled": True, "model_name": "../models"}
    with pytest.raises(ConfigError, match=r"'tracking\.registry\.model_name': must be one folder name"):
        validate_config(tiny_run_config)


@pytest.mark.parametrize("bad_class", ["../ring", "ABSOLUTE", "ring/../../x", ".ring"])
def test_a_class_that_is_a_path_is_refused_at_load(tiny_dataset, tiny_run_config, bad_class):
    bad_class = str(tiny_dataset / "ring") if bad_class == "ABSOLUTE" else bad_class
    tiny_run_config["scenario"]["classes"][1] = bad_class
    with pytest.raises(ConfigError) as error:
        validate_config(tiny_run_config)
    assert "'scenario.classes.1': must be one folder name" in str(error.value) and repr(bad_class) in str(error.value)


@pytest.fixture
def source(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny data set, so a bug cannot spoil the shared one."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "source"))


def test_preprocessing_an_absolute_class_leaves_the_source_unchanged(source, tmp_path):
    before = tree(source)
    try:
        preprocess_dataset(MVTEC3D, source, PREPROCESSING, tmp_path / "cache", classes=[str(source / "ring")], show_progress=False)
        refusal = ""
    except ConfigError as error:
        refusal = str(error)
    assert tree(source) == before  # before the fix: every ring image rewritten with its background removed
    assert "'/" in refusal and "must be one folder name" in refusal


def test_preprocessing_only_reads_the_source(source, tmp_path):
    before = tree(source)
    prepared = preprocess_dataset(MVTEC3D, source, PREPROCESSING, tmp_path / "cache", classes=["dome", "ring"], show_progress=False)
    assert tree(source) == before
    written = list((prepared.root / "ring" / "test").rglob("*.png"))
    assert written and not any(path.is_relative_to(source) for path in written)


def test_a_cache_inside_the_source_is_refused(source):
    before = tree(source)
    with pytest.raises(ConfigError, match=r"dataset\.cache_dir: .* is inside the source folder"):
        preprocess_dataset(MVTEC3D, source, PREPROCESSING, source / "cache", show_progress=False)
    assert tree(source) == before


def test_a_fresh_run_keeps_user_files_in_checkpoints_and_deletes_only_its_own(tiny_run_config):
    tiny_run_config["tracking"]["enabled"] = False
    config = validate_config(tiny_run_config)
    checkpoints = config.output_dir / config.name / "checkpoints"
    (checkpoints / "notes").mkdir(parents=True)
    (checkpoints / "notes" / "keep.txt").write_text("mine")
    (checkpoints / "readme.txt").write_text("also mine")
    run_experiment(config, show_progress=False)
    step_2 = (checkpoints / "step_2" / "meta.json").stat().st_mtime_ns
    run_experiment(config, show_progress=False)  # a fresh run again: deletes the first run's steps, rewrites them
    assert (checkpoints / "notes" / "keep.txt").read_text() == "mine"
    assert (checkpoints / "readme.txt").read_text() == "also mine"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["notes", "readme.txt", "step_0", "step_1", "step_2"]
    assert (checkpoints / "step_2" / "meta.json").stat().st_mtime_ns != step_2
    manifest = yaml.safe_load((checkpoints.parent / MANIFEST_FILE).read_text())
    assert set(manifest["checkpoints"]) == {f"step_{k}{suffix}" for k in range(3) for suffix in ("", ".partial")}


def test_a_checkpoint_folder_the_run_did_not_write_stops_it_untouched(tiny_run_config):
    config = validate_config(tiny_run_config)
    checkpoints = config.output_dir / config.name / "checkpoints"
    (checkpoints / "step_7").mkdir(parents=True)
    (checkpoints / "step_7" / "state.pt").write_text("someone else's")
    for resume in (False, True):
        with pytest.raises(ConfigError, match=r"checkpoints holds step_7 that no run of this folder wrote \(run_manifest\.json does not list it\)"):
            run_experiment(config, show_progress=False, resume=resume)
    assert (checkpoints / "step_7" / "state.pt").read_text() == "someone else's"


def test_zero_epochs_of_a_trainable_learner_is_refused(tiny_run_config):
    tiny_run_config["training"]["epochs"] = 0
    with pytest.raises(ConfigError, match=r"training\.epochs: 0 would evaluate the untrained learner 'reconstruction' \([\d,]+ trainable parameters\)"):
        run_experiment(validate_config(tiny_run_config), show_progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": ["dome", "ring", "dome", "wave"]}, r"scenario\.classes lists dome more than once"),
        ({"classes": ["dome", "ring", "brick"]}, r"split '2-1 with 2 steps' needs exactly 4 classes but scenario\.classes lists 3"),
        ({"base": 5}, r"split '5-1 with 2 steps' needs exactly 7 classes but scenario\.classes lists 4"),
        ({"increment": 2}, r"split '2-2 with 2 steps' needs exactly 6 classes"),
    ],
)
def test_bad_scenario_shapes_are_refused_at_load(tiny_run_config, change, message):
    tiny_run_config["scenario"].update(change)
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_run_config)


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ({"base": 6}, r"split '6-0 with 0 steps' needs exactly 6 classes but the synthetic data set has 5"),
        ({"base": 2, "classes": ["dome", "bagel"]}, r"scenario\.classes: bagel not in the synthetic data set .* allowed: dome, ring"),
    ],
)
def test_synthetic_scenario_shapes_are_refused_at_load(scenario, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"scenario": scenario, "learner": "reconstruction"})


def test_a_run_folder_that_links_out_of_outputs_is_refused(tiny_run_config, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outputs = Path(tiny_run_config["output_dir"])
    outputs.mkdir(parents=True)
    (outputs / "tiny").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=rf"tiny resolves to {elsewhere}, outside {outputs}; incad keeps its files inside that folder"):
        run_experiment(validate_config(tiny_run_config), show_progress=False)
    assert list(elsewhere.iterdir()) == []
