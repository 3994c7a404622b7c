"""Hostile or broken input is one line on stderr (exit code 2), never a traceback; unwritable outputs are refused before any work."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from incad.cli import main
from incad.config import validate_config
from incad.errors import OutputError
from conftest import REPO_ROOT


def test_a_binary_yaml_is_one_line_without_traceback(tmp_path):
    """In a fresh interpreter, as a user runs it: stderr holds the one line and nothing else."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_bytes(bytes(range(256)) * 4)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run([sys.executable, "-m", "incad.cli", "run", str(scenario)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [f"error: {scenario}: not a text file (byte 128 is not UTF-8). Pass a scenario YAML, e.g. experiments/quickstart.yaml."]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01\x02 NUL bytes are UTF-8 but not YAML", "not valid YAML (unacceptable character #x0000: special characters are not allowed"),
        (b"- dataset\n- scenario\n", "expected a mapping of sections (dataset, scenario, learner, ...), got list"),
        (b"just a sentence\n", "expected a mapping of sections (dataset, scenario, learner, ...), got str"),
        (b"scenario:\n  base: 2\n    steps: 1\n", "not valid YAML (line 3, column 10: mapping values are not allowed here)"),
    ],
    ids=["nul-bytes", "list", "scalar", "bad-indent"],
)
def test_a_yaml_that_is_not_a_config_is_one_line(tmp_path, capsys, content, message):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_bytes(content)
    assert main(["run", str(scenario), "--no-progress"]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"error: {scenario}: ") and message in stderr


def test_a_binary_strategy_file_is_one_line(tmp_path, capsys):
    strategy = tmp_path / "strategy.yaml"
    strategy.write_bytes(b"\xff\xfe\x00binary")
    assert main(["run", str(REPO_ROOT / "experiments" / "quickstart.yaml"), "--strategy", str(strategy), "--no-progress"]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and f"{strategy}: not a text file" in stderr


@pytest.fixture
def no_data_preparation(monkeypatch):
    """Fails the test if the run gets as far as preparing data (and so training)."""

    def prepared(*args, **kwargs):
        raise AssertionError("the run prepared data before refusing its unwritable output")

    monkeypatch.setattr("incad.runner.prepare_data", prepared)


def run_refused(raw: dict) -> str:
    from incad.runner import run_experiment

    with pytest.raises(OutputError) as error:
        run_experiment(validate_config(raw), show_progress=False)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_output_folder_under_a_file_is_refused_before_training(tiny_run_config, tmp_path, no_data_preparation):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    message = run_refused({**tiny_run_config, "output_dir": str(blocker / "outputs")})
    assert message.startswith(f"{blocker / 'outputs' / 'tiny'}: the run's output folder cannot be written (not a directory)")
    assert "output_dir" in message


def test_a_read_only_file_system_is_refused_before_training(tiny_run_config, tmp_path, monkeypatch, no_data_preparation):
    """Root writes through permission bits, so the read-only mount is simulated where the OS refuses: creating a file."""
    read_only = tmp_path / "read-only"
    real_open = os.open

    def open_on_read_only_mount(path, flags, *args, **kwargs):
        if str(path).startswith(str(read_only)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_on_read_only_mount)
    message = run_refused({**tiny_run_config, "output_dir": str(read_only)})
    assert message.startswith(f"{read_only / 'tiny'}: the run's output folder cannot be written (read-only file system)")


def test_an_existing_checkpoint_path_that_is_a_file_is_refused(tiny_run_config, tmp_path, no_data_preparation):
    run_folder = tmp_path / "outputs" / "tiny"
    run_folder.mkdir(parents=True)
    (run_folder / "checkpoints").write_text("a file where the checkpoint folder goes")
    message = run_refused(tiny_run_config)
    assert message.startswith(f"{run_folder / 'checkpoints'}: the checkpoint folder cannot be written (not a directory)")


def test_an_mlflow_store_in_an_unwritable_folder_is_refused_before_training(tiny_run_config, tmp_path, no_data_preparation):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tracking = {**tiny_run_config["tracking"], "tracking_uri": f"sqlite:///{blocker / 'mlflow.db'}"}
    message = run_refused({**tiny_run_config, "tracking": tracking})
    assert message.startswith(f"{blocker}: the folder of the MLflow store cannot be written (not a directory)")
    assert "tracking.tracking_uri" in message
    assert not (tmp_path / "outputs" / "tiny" / "checkpoints").exists()


def test_an_unwritable_mlflow_folder_does_not_matter_without_tracking(tiny_run_config, tmp_path):
    from incad.writable import require_writable_outputs

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tracking = {**tiny_run_config["tracking"], "tracking_uri": f"sqlite:///{blocker / 'mlflow.db'}", "enabled": False}
    require_writable_outputs(validate_config({**tiny_run_config, "tracking": tracking}))
    assert (tmp_path / "outputs" / "tiny").is_dir() and list((tmp_path / "outputs" / "tiny").iterdir()) == []
