"""Step checkpoints that make a run resumable, in a format that cannot execute code.

After every completed step (training, calibration, evaluation) the runner
writes ``<output_dir>/<name>/checkpoints/step_<k>/``:

- ``state.pt``: tensors and plain containers only, saved with ``torch.save``
  and read back with ``torch.load(weights_only=True)``: the learner's and the
  optimizer's state dicts, the state of every strategy plugin that has one
  (:class:`StatefulPlugin`), the result matrices and the RNG states (python,
  numpy, torch);
- ``meta.json``: the step, the resolved config, the MLflow run id, the
  per-step training times and Avalanche's clock counters.

A step folder is written under a temporary name and renamed when complete, so
a run killed while writing leaves the previous step as the last checkpoint; a
write that fails (a full disk) removes its temporary folder and says why.
``--resume`` restores the last step folder that reads and fits the freshly
built strategy, logging each later one it skips and why; everything is checked
before anything is restored, so a bad checkpoint leaves nothing half-loaded.
Avalanche's own ``save_checkpoint`` pickles the whole strategy with dill,
which loads by executing code; this module never does.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from incad.errors import ConfigError, OutputError, os_error_reason
from incad.evaluation.results import ResultMatrices
from incad.models.layers.growing import growing_buffer_names

STEP_FOLDER = re.compile(r"^step_(\d+)$")
# Config keys that say where a run's files live, not what it computes: a copied output folder still resumes.
LOCATION_KEYS = ("output_dir",)
STATE_SECTIONS = ("learner", "optimizer", "plugins", "matrices", "rng")
META_FIELDS = {"step": int, "config": dict, "mlflow_run_id": (str, type(None)), "step_seconds": list, "clock": dict}
RNG_STATES = {"python", "numpy", "torch", "cuda"}


class UnusableCheckpoint(Exception):
    """A step folder that cannot be restored; the message says why, in a few words."""


@runtime_checkable
class StatefulPlugin(Protocol):
    """A strategy plugin whose state (buffers, importances, a previous model) must survive a resume.

    ``state_dict`` returns tensors, numbers, strings, lists, tuples and dicts
    only (what ``torch.load(weights_only=True)`` accepts); ``load_state_dict``
    restores it into a freshly built plugin of the same configuration.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RestoredRun:
    """What the runner needs to continue after the checkpointed step."""

    step: int
    mlflow_run_id: str | None
    step_seconds: list[float]


def stateful_plugins(strategy) -> dict[str, StatefulPlugin]:
    """The strategy's stateful plugins keyed by class name and position (stable for one config)."""
    found = [plugin for plugin in strategy.plugins if isinstance(plugin, StatefulPlugin)]
    return {f"{index}:{type(plugin).__qualname__}": plugin for index, plugin in enumerate(found)}


def _rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _clock_counters(strategy) -> dict[str, int]:
    return {name: value for name, value in vars(strategy.clock).items() if type(value) is int}


def save_checkpoint(folder: Path, step: int, strategy, matrices: ResultMatrices, config_json: dict, mlflow_run_id: str | None, step_seconds: list[float]) -> Path:
    """Write the checkpoint of completed ``step`` into ``folder/step_<step>``; returns that path.

    A failed write (full disk, read-only file system) removes the ``.partial``
    folder and raises an :class:`OutputError` naming the folder and the cause.
    """
    target = folder / f"step_{step}"
    partial = folder / f"step_{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    state = {
        "learner": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "plugins": {key: plugin.state_dict() for key, plugin in stateful_plugins(strategy).items()},
        "matrices": {name: torch.from_numpy(matrix.copy()) for name, matrix in matrices.values.items()},
        "rng": _rng_state(),
    }
    meta = {
        "step": step,
        "config": config_json,
        "mlflow_run_id": mlflow_run_id,
        "step_seconds": step_seconds,
        "clock": _clock_counters(strategy),
        # The learner was built from this order (Learner.class_names): a resume must rebuild the same one.
        "class_order": list(matrices.class_names),
    }
    try:
        partial.mkdir(parents=True)
        # Through a Python file, a full disk is an OSError with its errno (torch's own writer says "unexpected pos").
        with open(partial / "state.pt", "wb") as file:
            torch.save(state, file)
        (partial / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise OutputError(
            f"{target}: cannot write the checkpoint of step {step}: {os_error_reason(exc)} (the incomplete {partial.name} was removed). "
            "Free space or set output_dir to a writable disk, then continue with --resume."
        ) from None
    return target


def step_folders(folder: Path) -> list[Path]:
    """The folders of the completed steps, last step first."""
    steps = [(int(match.group(1)), path) for path in folder.glob("step_*") if path.is_dir() and (match := STEP_FOLDER.match(path.name))]
    return [path for _, path in sorted(steps, reverse=True)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The folder of the last completed step, or None when there is none."""
    steps = step_folders(folder)
    return steps[0] if steps else None


def _floats_on(value: Any, device: torch.device) -> Any:
    """``value`` with its floating-point tensors on ``device`` (importances, anchors, parameters);
    integer tensors (buffer indices) stay where they are."""
    if isinstance(value, torch.Tensor):
        return value.to(device) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: _floats_on(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_floats_on(item, device) for item in value)
    return value


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / "meta.json"
    if not file.is_file():
        raise UnusableCheckpoint("meta.json is missing")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnusableCheckpoint(f"meta.json is not valid JSON, truncated or corrupt ({exc})") from None
    if not isinstance(meta, dict):
        raise UnusableCheckpoint(f"meta.json holds a {type(meta).__name__}, not the checkpoint's fields")
    for field, kind in META_FIELDS.items():
        if field not in meta or not isinstance(meta[field], kind):
            raise UnusableCheckpoint(f"meta.json has no valid '{field}'")
    if f"step_{meta['step']}" != path.name:
        raise UnusableCheckpoint(f"meta.json is of step {meta['step']}, not of its folder")
    return meta


def _read_state(path: Path) -> dict[str, Any]:
    file = path / "state.pt"
    if not file.is_file():
        raise UnusableCheckpoint("state.pt is missing")
    if file.stat().st_size == 0:
        raise UnusableCheckpoint("state.pt is empty")
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch reports a damaged file as RuntimeError, UnpicklingError, EOFError, ...
        first_sentence = str(exc).split(". ")[0].splitlines()[0] if str(exc) else "no detail"
        raise UnusableCheckpoint(f"state.pt is truncated, corrupt or holds more than tensors ({type(exc).__name__}: {first_sentence})") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(section), dict) for section in STATE_SECTIONS) or not RNG_STATES <= set(state["rng"]):
        raise UnusableCheckpoint(f"state.pt lacks one of its sections {', '.join(STATE_SECTIONS)}")
    return state


def _run_defining(config_json: dict) -> dict:
    return {key: value for key, value in config_json.items() if key not in LOCATION_KEYS}


def _check_fits(path: Path, meta: dict, state: dict, strategy, matrices: ResultMatrices, config_json: dict) -> None:
    """Refuse a checkpoint of another config (ConfigError); skip one whose tensors do not fit (UnusableCheckpoint)."""
    saved_config, config = _run_defining(meta["config"]), _run_defining(config_json)
    if saved_config != config:
        changed = sorted(key for key in set(saved_config) | set(config) if saved_config.get(key) != config.get(key))
        raise ConfigError(
            f"--resume: the checkpoint {path} was written with a different configuration (sections {', '.join(changed)} differ); "
            "resume with the same YAML and --set values, or run without --resume to start again"
        )
    saved_order = meta.get("class_order", list(matrices.class_names))
    if saved_order != list(matrices.class_names):
        raise ConfigError(
            f"--resume: the checkpoint {path} was written for the class order {saved_order}, the scenario now has "
            f"{list(matrices.class_names)} (the dataset's classes changed?); resume on the same data or run without --resume"
        )
    plugins = stateful_plugins(strategy)
    if set(plugins) != set(state["plugins"]):
        raise ConfigError(f"--resume: the checkpoint {path} holds the state of plugins {sorted(state['plugins'])}, the strategy has {sorted(plugins)}")
    expected, saved = strategy.model.state_dict(), state["learner"]
    if expected.keys() != saved.keys():
        raise UnusableCheckpoint(f"state.pt holds other learner tensors ({len(saved.keys() - expected.keys())} unexpected, {len(expected.keys() - saved.keys())} missing)")
    growing = set(growing_buffer_names(strategy.model))
    wrong = [key for key, tensor in expected.items() if isinstance(tensor, torch.Tensor) and key not in growing and getattr(saved[key], "shape", None) != tensor.shape]
    if wrong:
        raise UnusableCheckpoint(f"state.pt holds learner tensors of another shape ({', '.join(wrong[:3])})")
    saved_matrices = state["matrices"]
    if saved_matrices.keys() != matrices.values.keys() or any(getattr(saved_matrices[name], "shape", None) != matrix.shape for name, matrix in matrices.values.items()):
        raise UnusableCheckpoint("state.pt holds result matrices of another shape")


def load_checkpoint(path: Path, strategy, matrices: ResultMatrices, config_json: dict) -> RestoredRun:
    """Restore a strategy (learner, optimizer, plugins, clock), the matrices and the RNG states from ``path``.

    The strategy must be freshly built from the same config; a checkpoint of a
    different config (its output location aside) is refused, naming the keys
    that differ. A checkpoint that cannot be read or does not fit raises
    :class:`UnusableCheckpoint` before anything is restored.
    """
    meta = _read_meta(path)
    state = _read_state(path)
    _check_fits(path, meta, state, strategy, matrices, config_json)
    strategy.model.load_state_dict(state["learner"])
    # Avalanche moves the model only inside train(): move it now, so the optimizer state loads onto its device.
    strategy.model.to(strategy.device)
    # Avalanche adds every model parameter to the optimizer on the first experience; do the same before loading its state.
    strategy.make_optimizer(reset_optimizer_state=True)
    strategy.optimizer.load_state_dict(state["optimizer"])
    for key, plugin in stateful_plugins(strategy).items():
        plugin.load_state_dict(_floats_on(state["plugins"][key], strategy.device))
    for name, matrix in state["matrices"].items():
        matrices.values[name] = matrix.numpy().copy()
    for name, value in meta["clock"].items():
        setattr(strategy.clock, name, value)
    _restore_rng(state["rng"])
    return RestoredRun(meta["step"], meta["mlflow_run_id"], list(meta["step_seconds"]))


def resume_latest(folder: Path, strategy, matrices: ResultMatrices, config_json: dict) -> RestoredRun:
    """Restore the last step checkpoint of ``folder`` that can be restored, logging each later one skipped and why."""
    steps = step_folders(folder)
    if not steps:
        raise ConfigError(f"--resume: no completed step checkpoint in {folder}; run without --resume to start from the first step")
    skipped = []
    for path in steps:
        try:
            return load_checkpoint(path, strategy, matrices, config_json)
        except UnusableCheckpoint as reason:
            logging.getLogger("incad").warning("--resume: skipping the checkpoint %s: %s", path, reason)
            skipped.append(f"{path.name}: {reason}")
    raise ConfigError(
        f"--resume: no checkpoint in {folder} can be restored ({'; '.join(skipped)}); run without --resume to start again from the first step"
    )
