"""Which split each phase of a run may read: test samples only during evaluation.

Published continual anomaly-detection results have been selected on the test
set (epochs chosen by test metrics). incad's claim is that nothing of the kind
can happen: training, a learner's ``fit`` and ``calibrate``, strategy buffers
and any selection run inside a training phase, and every sample is handed out
by :class:`incad.data.dataset.AnomalyDetectionDataset`, which reports each
read here. A test sample read in any phase but ``evaluation`` raises
:class:`SplitAccessError` before its pixels are returned. Outside a run (no
phase: tests, tools inspecting a scenario) every split is readable.

The phase is process-wide state (the template sets it; loaders with
``num_workers`` read in their worker processes after it is set, and forked
workers inherit it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from incad.errors import IncadError

TRAINING_PHASES = ("fit", "train", "calibrate")
EVALUATION = "evaluation"
TEST_SPLIT = "test"

Listener = Callable[[str | None, str, str], None]

_phase: list[str | None] = [None]
_listeners: list[Listener] = []


class SplitAccessError(IncadError):
    """A test sample was read outside evaluation: the run would have used test data to train or select."""


def current_phase() -> str | None:
    return _phase[-1]


@contextmanager
def data_phase(name: str) -> Iterator[None]:
    """Run the block as phase ``name`` (``fit``, ``train``, ``calibrate`` or ``evaluation``); the previous phase afterwards."""
    _phase.append(name)
    try:
        yield
    finally:
        _phase.pop()


def check_read(split: str, path: str) -> None:
    """Report a read of ``path`` (a sample of ``split``) to the listeners; refuse a test sample outside evaluation."""
    phase = current_phase()
    for listener in _listeners:
        listener(phase, split, path)
    if split == TEST_SPLIT and phase is not None and phase != EVALUATION:
        raise SplitAccessError(
            f"{path}: a test sample was read during '{phase}'. Only evaluation may read the test split; "
            "training, fit, calibrate, strategy buffers and model or threshold selection read training (and validation) samples."
        )


@contextmanager
def recording_reads() -> Iterator[list[tuple[str | None, str, str]]]:
    """Every read in the block as ``(phase, split, path)``, in order."""
    reads: list[tuple[str | None, str, str]] = []

    def listener(phase: str | None, split: str, path: str) -> None:
        reads.append((phase, split, path))

    _listeners.append(listener)
    try:
        yield reads
    finally:
        _listeners.remove(listener)
