"""Concurrent runs, with real processes: one run per output folder, no stale lock after a kill, a fresh sqlite store opened by two at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

import mlflow
import pytest

from concurrency_helpers import WAIT_S, hold_lock, open_store_when_both_are_ready, run_when_both_are_ready
from incad.config import validate_config
from incad.errors import ConfigError
from incad.run_folder import MANIFEST_FILE, locked_run_folder
from incad.runner import run_experiment

SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, as two `incad run` commands would be


def test_two_runs_of_one_name_started_together_give_one_refusal_and_one_intact_run(tiny_run_config, tmp_path):
    barrier, release = SPAWN.Barrier(2), SPAWN.Event()
    reports = [tmp_path / "first.txt", tmp_path / "second.txt"]
    processes = [SPAWN.Process(target=run_when_both_are_ready, args=(tiny_run_config, barrier, release, str(report))) for report in reports]
    for process in processes:
        process.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while all(process.is_alive() for process in processes) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        release.set()  # the run that holds the folder may go on
        for process in processes:
            process.join(WAIT_S)
    texts = [report.read_text() for report in reports]
    assert sorted(text.split(":")[0] for text in texts) == ["finished", "refused"], texts
    winner = processes[texts.index("finished")]
    refusal = next(text for text in texts if text.startswith("refused"))
    folder = Path(tiny_run_config["output_dir"]).resolve() / "tiny"
    assert refusal.startswith(f"refused: {folder} is in use by another incad run (pid {winner.pid} on host {socket.gethostname()}, started 20")
    assert "\n" not in refusal
    checkpoints = folder / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step_0", "step_1", "step_2"]
    assert [json.loads((checkpoints / f"step_{k}" / "meta.json").read_text())["step"] for k in range(3)] == [0, 1, 2]
    assert len(json.loads((folder / "results.json").read_text())["step_seconds"]) == 3
    assert "step_2" in json.loads((folder / MANIFEST_FILE).read_text())["checkpoints"]


@pytest.fixture
def held_folder(tmp_path):
    """A run folder whose lock a live child process holds; yields (folder, process)."""
    folder = tmp_path / "outputs" / "tiny"
    ready = SPAWN.Event()
    process = SPAWN.Process(target=hold_lock, args=(str(folder), ready))
    process.start()
    assert ready.wait(WAIT_S)
    yield folder, process
    if process.is_alive():
        process.kill()
    process.join()


def test_a_killed_run_leaves_no_lock_that_blocks_the_next(held_folder):
    folder, holder = held_folder
    with pytest.raises(ConfigError, match=rf"is in use by another incad run \(pid {holder.pid} on host"):
        with locked_run_folder(folder):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with locked_run_folder(folder):
        recorded = json.loads((folder / "run.lock").read_text())
    assert recorded["pid"] == os.getpid()


def test_resume_is_refused_while_another_process_holds_the_folder(held_folder, tiny_run_config):
    folder, holder = held_folder
    tiny_run_config["output_dir"] = str(folder.parent)
    with pytest.raises(ConfigError, match=rf"{folder} is in use by another incad run \(pid {holder.pid} "):
        run_experiment(validate_config(tiny_run_config), show_progress=False, resume=True)


def test_force_runs_without_the_held_lock(held_folder, caplog):
    folder, holder = held_folder
    with locked_run_folder(folder, force=True):
        entered = True
    assert entered and f"pid {holder.pid}" in caplog.text and "--force" in caplog.text


def test_two_processes_opening_a_fresh_sqlite_store_at_once_both_succeed(tiny_run_config, tmp_path):
    store = tmp_path / "mlflow-fresh.db"
    tiny_run_config["tracking"]["tracking_uri"] = f"sqlite:///{store}"
    config = validate_config(tiny_run_config)
    barrier = SPAWN.Barrier(2)
    reports = [tmp_path / "a.txt", tmp_path / "b.txt"]
    processes = [SPAWN.Process(target=open_store_when_both_are_ready, args=(config, barrier, str(report))) for report in reports]
    for process in processes:
        process.start()
    for process in processes:
        process.join(WAIT_S)
    texts = [report.read_text() for report in reports]
    assert all(text.startswith("ok ") for text in texts), texts
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted(text.split()[1] for text in texts)
