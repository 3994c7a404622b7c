"""Registering the retrained model after every step in the MLflow model registry.

Each step's model is logged as the data-only pyfunc model of ``anomaly_model.py``
(weights, config, class order and their manifest; no code and no pickled
module; the manifest's sha256 is a tag of the logged model), registered under
``tracking.registry.model_name`` (default: the run name) with tags for the
scenario, step, classes seen, strategy, learner and the step's mean metrics
on the classes seen so far. ``champion`` moves to every new version unless
``champion_margin`` is set; then only if its mean I-AUROC on its seen classes
(a test-split result: the gate is opt-in for that reason) is not below the
champion's by more than the margin. "latest always moves" needs no alias: MLflow reserves the
alias name ``latest`` and ``models:/<name>/latest`` always resolves to the
newest version.
"""

from __future__ import annotations

import math
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from incad.config import RunConfig
from incad.evaluation.results import METRICS, ResultMatrices
from incad.tracking.anomaly_model import DATA_FOLDER, LOADER_MODULE, MANIFEST_TAG, write_model_data

CHAMPION = "champion"
CHAMPION_METRIC = "i_auroc"
# What loading the model needs besides incad itself (installed from this repository).
RUNTIME_PACKAGES = ("torch", "torchvision", "mlflow", "numpy", "pandas", "avalanche-lib", "efficientnet-pytorch", "pydantic", "tifffile", "pillow", "scipy", "scikit-learn")


def pip_requirements() -> list[str]:
    """Pinned versions of the runtime packages installed here (skips MLflow's slow requirement inference)."""
    pinned = []
    for package in RUNTIME_PACKAGES:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pinned


def model_name(config: RunConfig) -> str:
    return config.tracking.registry.model_name or config.name


def step_tags(config: RunConfig, matrices: ResultMatrices, step: int, classes_seen: list[str]) -> dict[str, str]:
    """Tags of a version: where it comes from and its mean metrics on the classes seen so far."""
    split = config.scenario
    tags = {
        "scenario": f"{config.name}: {split.base}-{split.increment} with {split.steps} steps, {split.modality}",
        "step": str(step),
        "classes_seen": ",".join(classes_seen),
        "strategy": config.strategy.name,
        "learner": config.learner.name,
    }
    for name in METRICS:
        tags[f"{name}_seen_mean"] = f"{matrices.step_mean(name, step):.6f}"
    return tags


def register_step_model(config: RunConfig, learner: torch.nn.Module, class_order: list[str], matrices: ResultMatrices, step: int, classes_seen: list[str]) -> ModelVersion:
    """Log, register, tag and alias the model of ``step`` (inside the run's active MLflow run)."""
    name = model_name(config)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / DATA_FOLDER
        manifest_sha256 = write_model_data(config, learner, class_order, data)
        info = mlflow.pyfunc.log_model(
            name=f"model-step{step}",
            loader_module=LOADER_MODULE,
            data_path=str(data),
            pip_requirements=pip_requirements(),
            tags={MANIFEST_TAG: manifest_sha256},
            step=step,
        )
    tags = step_tags(config, matrices, step, classes_seen)
    registered = mlflow.register_model(info.model_uri, name, tags=tags)
    client = MlflowClient()
    margin = config.tracking.registry.champion_margin
    if margin is None or deserves_champion(client, name, float(tags[f"{CHAMPION_METRIC}_seen_mean"]), margin):
        client.set_registered_model_alias(name, CHAMPION, registered.version)
    return client.get_model_version(name, registered.version)


def deserves_champion(client: MlflowClient, name: str, candidate: float, margin: float) -> bool:
    """True when there is no champion yet, or the candidate is not worse than it by more than ``margin``."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return True
    best = float(champion.tags.get(f"{CHAMPION_METRIC}_seen_mean", "nan"))
    if math.isnan(best):
        return True
    return not math.isnan(candidate) and candidate >= best - margin
