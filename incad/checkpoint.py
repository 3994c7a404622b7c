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
a run killed while writing leaves the previous step as the last checkpoint.
Avalanche's own ``save_checkpoint`` pickles the whole strategy with dill,
which loads by executing code; this module never does.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from incad.errors import ConfigError
from incad.evaluation.results import ResultMatrices

STEP_FOLDER = re.compile(r"^step_(\d+)$")


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
    """Write the checkpoint of completed ``step`` into ``folder/step_<step>``; returns that path."""
    target = folder / f"step_{step}"
    partial = folder / f"step_{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    state = {
        "learner": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "plugins": {key: plugin.state_dict() for key, plugin in stateful_plugins(strategy).items()},
        "matrices": {name: torch.from_numpy(matrix.copy()) for name, matrix in matrices.values.items()},
        "rng": _rng_state(),
    }
    torch.save(state, partial / "state.pt")
    meta = {
        "step": step,
        "config": config_json,
        "mlflow_run_id": mlflow_run_id,
        "step_seconds": step_seconds,
        "clock": _clock_counters(strategy),
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    """The folder of the last completed step, or None when there is none."""
    steps = [(int(match.group(1)), path) for path in folder.glob("step_*") if path.is_dir() and (match := STEP_FOLDER.match(path.name))]
    return max(steps)[1] if steps else None


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


def load_checkpoint(path: Path, strategy, matrices: ResultMatrices, config_json: dict) -> RestoredRun:
    """Restore a strategy (learner, optimizer, plugins, clock), the matrices and the RNG states from ``path``.

    The strategy must be freshly built from the same config; a checkpoint of a
    different config is refused, naming the keys that differ.
    """
    meta = json.loads((path / "meta.json").read_text())
    if meta["config"] != config_json:
        changed = sorted(key for key in set(meta["config"]) | set(config_json) if meta["config"].get(key) != config_json.get(key))
        raise ConfigError(
            f"--resume: the checkpoint {path} was written with a different configuration (sections {', '.join(changed)} differ); "
            "resume with the same YAML and --set values, or run without --resume to start again"
        )
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    strategy.model.load_state_dict(state["learner"])
    # Avalanche moves the model only inside train(): move it now, so the optimizer state loads onto its device.
    strategy.model.to(strategy.device)
    # Avalanche adds every model parameter to the optimizer on the first experience; do the same before loading its state.
    strategy.make_optimizer(reset_optimizer_state=True)
    strategy.optimizer.load_state_dict(state["optimizer"])
    plugins = stateful_plugins(strategy)
    if set(plugins) != set(state["plugins"]):
        raise ConfigError(f"--resume: the checkpoint {path} holds the state of plugins {sorted(state['plugins'])}, the strategy has {sorted(plugins)}")
    for key, plugin in plugins.items():
        plugin.load_state_dict(_floats_on(state["plugins"][key], strategy.device))
    for name, matrix in state["matrices"].items():
        matrices.values[name] = matrix.numpy().copy()
    for name, value in meta["clock"].items():
        setattr(strategy.clock, name, value)
    _restore_rng(state["rng"])
    return RestoredRun(meta["step"], meta["mlflow_run_id"], list(meta["step_seconds"]))
