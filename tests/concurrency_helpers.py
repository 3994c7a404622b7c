"""What the child processes of tests/test_run_lock.py run, kept in a module of its own.

A spawned child imports the module of the function it runs: here that costs
only what the function itself needs (a lock holder needs no torch).
"""

from __future__ import annotations

import time
from pathlib import Path

WAIT_S = 300  # generous: the machine running the tests may be loaded; waits end as soon as the event happens


def hold_lock(folder: str, ready) -> None:
    """Take the run folder's lock, say so, and keep it until killed."""
    from incad.run_folder import locked_run_folder

    with locked_run_folder(Path(folder)):
        ready.set()
        time.sleep(WAIT_S)


def run_when_both_are_ready(raw: dict, barrier, release, report: str) -> None:
    """Start a whole run together with the other child; the run holds at its first step until ``release``."""
    from avalanche.core import SupervisedPlugin

    from incad.config import validate_config
    from incad.errors import IncadError
    from incad.runner import run_experiment

    class HoldBeforeTraining(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs) -> None:
            release.wait(WAIT_S)

    config = validate_config(raw)
    barrier.wait(WAIT_S)
    try:
        run_experiment(config, show_progress=False, extra_plugins=(HoldBeforeTraining(),))
        Path(report).write_text("finished")
    except IncadError as error:
        Path(report).write_text(f"refused: {error}")


def open_store_when_both_are_ready(config, barrier, report: str) -> None:
    """Open the run's MLflow store and log to a new run, together with the other child."""
    from incad.tracking.mlflow_tracker import MlflowTracker

    barrier.wait(WAIT_S)
    try:
        with MlflowTracker(config) as tracker:
            tracker.log_step(0, {"value": 1.0})
        Path(report).write_text(f"ok {tracker.run_id}")
    except Exception as error:  # noqa: BLE001  (the report says what went wrong)
        Path(report).write_text(f"failed: {type(error).__name__}: {error}")
