"""One run, end to end: data -> scenario -> learner + strategy -> evaluation -> tracking."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from incad.config import RunConfig
from incad.data.synthetic import ensure_synthetic
from incad.errors import DataError
from incad.evaluation.plugin import AnomalyEvaluationPlugin
from incad.evaluation.results import ResultMatrices
from incad.learners.base import Learner
from incad.registry import LEARNERS, STRATEGIES
from incad.scenario import Scenario, build_scenario
from incad.strategies.template import AnomalyDetectionTemplate
from incad.tracking.mlflow_tracker import MlflowTracker
from incad.tracking.plots import plot_metric_per_class
from incad.tracking.progress import ProgressBarPlugin

DEFAULT_DATA_CACHE = Path(".cache") / "incad" / "data"


@dataclass
class RunResult:
    """What a run produced; every figure derives from ``matrices``."""

    config: RunConfig
    scenario: Scenario
    matrices: ResultMatrices
    summary: dict[str, float]
    step_seconds: list[float]
    output_dir: Path
    mlflow_run_id: str | None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA device is available; set device: auto or cpu")
    return torch.device(name)


def prepare_data(config: RunConfig) -> Path:
    """The dataset root: generated (and cached) synthetic data, or the user's folder, checked to exist."""
    dataset = config.dataset
    if dataset.name == "synthetic":
        cache = dataset.root or Path(os.environ.get("INCAD_DATA_DIR", DEFAULT_DATA_CACHE))
        return ensure_synthetic(dataset.synthetic, cache)
    if not dataset.root.is_dir():
        raise DataError(dataset.root, "dataset folder not found.", "Set dataset.root to the folder that holds one sub-folder per class.")
    return dataset.root


def build_learner(config: RunConfig, num_objects: int) -> Learner:
    learner_class = LEARNERS.get(config.learner.name)
    options = learner_class.Options.model_validate(config.learner_options())
    return learner_class(options, modality=config.scenario.modality, num_objects=num_objects, image_size=config.dataset.image_size)


def build_strategy(config: RunConfig, learner: Learner, extra_plugins: list, device: torch.device) -> AnomalyDetectionTemplate:
    strategy_class = STRATEGIES.get(config.strategy.name)
    options = strategy_class.Options.model_validate(config.strategy_options())
    training = config.training
    trainable = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=training.lr, weight_decay=training.weight_decay)
    return AnomalyDetectionTemplate(
        learner=learner,
        optimizer=optimizer,
        train_epochs=training.epochs,
        train_mb_size=training.batch_size,
        eval_mb_size=config.evaluation.batch_size,
        device=device,
        plugins=[*strategy_class.plugins(options), *learner.plugins(), *extra_plugins],
        grad_clip=training.grad_clip,
        num_workers=training.num_workers,
    )


def run_experiment(config: RunConfig, show_progress: bool = True) -> RunResult:
    """Train step by step; after every step evaluate all classes seen so far and log everything."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data_root = prepare_data(config)
    scenario = build_scenario(config, data_root)
    matrices = ResultMatrices(scenario.class_order, scenario.num_steps)
    learner = build_learner(config, num_objects=len(scenario.class_order))
    plugins: list = [AnomalyEvaluationPlugin(matrices, config.evaluation.smoothing_sigma)]
    if show_progress:
        plugins.append(ProgressBarPlugin(["+".join(classes) for classes in scenario.step_classes]))
    strategy = build_strategy(config, learner, plugins, device)
    output_dir = config.output_dir / config.name
    step_seconds: list[float] = []
    with MlflowTracker(config) as tracker:
        benchmark = scenario.benchmark
        for step, experience in enumerate(benchmark.train_stream):
            started = time.perf_counter()
            strategy.train(experience)
            step_seconds.append(time.perf_counter() - started)
            strategy.eval(benchmark.test_stream[: step + 1])
            tracker.log_step(step, matrices, {"train_seconds": step_seconds[-1], **strategy.loss_terms})
        summary = matrices.summary()
        artifacts = [*matrices.write_csv(output_dir), plot_metric_per_class(matrices, output_dir / "metrics_per_class.png")]
        results_path = output_dir / "results.json"
        results_path.write_text(json.dumps({"summary": summary, "step_seconds": step_seconds, "classes": scenario.class_order}, indent=2))
        tracker.log_final(matrices, summary, [*artifacts, results_path])
    return RunResult(config, scenario, matrices, summary, step_seconds, output_dir, tracker.run_id)
