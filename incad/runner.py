"""One run, end to end: data -> scenario -> learner + strategy -> evaluation -> tracking."""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin

from incad.checkpoint import resume_latest, save_checkpoint
from incad.config import RunConfig
from incad.data.datasets import PreparedDataset, cache_root, prepare_dataset
from incad.distributed import barrier, from_main_process, init_from_environment, is_main_process, main_process_first, rank_device, world_size
from incad.errors import ConfigError
from incad.evaluation.avalanche_metrics import AnomalyDetectionMetrics, ForgettingMeasureMetric
from incad.evaluation.results import ResultMatrices
from incad.learners import Learner, create_learner
from incad.models.backbones.cache import attach_disk_store
from incad.models.backbones.feature_store import store_folder
from incad.paths import path_within
from incad.resolve import ResolvedRun, resolve
from incad.run_folder import CheckpointManifest, locked_run_folder
from incad.scenario import Scenario, build_scenario, scenario_classes
from incad.strategies import create_strategy
from incad.tracking.mlflow_logger import MlflowLogger
from incad.tracking.mlflow_tracker import MlflowTracker, resolve_tracking_uri
from incad.tracking.model_registry import register_step_model
from incad.tracking.progress import ProgressBarPlugin
from incad.tracking.report import write_run_report
from incad.writable import require_writable_outputs


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
    learner: Learner


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


def prepare_data(config: RunConfig, show_progress: bool = False) -> PreparedDataset:
    """The data the run reads: generated synthetic data, the user's folder, or its preprocessed cache, with its reader."""
    return prepare_dataset(config.dataset, scenario_classes(config), show_progress)


def refuse_untrained(config: RunConfig, learner: Learner) -> None:
    """``training.epochs: 0`` would report an untrained model's figures; only a learner with nothing to train may skip it."""
    trainable = sum(p.numel() for p in learner.parameters() if p.requires_grad)
    if config.training.epochs == 0 and trainable:
        raise ConfigError(
            f"training.epochs: 0 would evaluate the untrained learner '{config.learner.name}' "
            f"({trainable:,} trainable parameters); set training.epochs to 1 or more"
        )


def build_evaluator(matrices: ResultMatrices, config: RunConfig) -> EvaluationPlugin:
    """Avalanche evaluation: the step x object metrics, then the forgetting measure, logged to MLflow."""
    metrics = [AnomalyDetectionMetrics(matrices, config.evaluation.smoothing_sigma), ForgettingMeasureMetric(matrices)]
    with warnings.catch_warnings():
        # Without tracking the metrics still fill the matrices and results.json: Avalanche's warning would mislead.
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*metrics, loggers=[MlflowLogger()] if config.tracking.enabled else [])


def run_experiment(
    run: ResolvedRun | RunConfig,
    show_progress: bool = True,
    resume: bool = False,
    extra_plugins: tuple = (),
    force: bool = False,
    parent_run_id: str | None = None,
) -> RunResult:
    """Train step by step; after every step evaluate all classes seen so far, log, checkpoint and register.

    ``run`` is a resolved run (:func:`incad.resolve.load_run`) or a config,
    which is resolved here. ``resume`` continues from the last step checkpoint
    of ``outputs/<name>`` (same config required) in the same MLflow run;
    without it, the checkpoints that runs of that name wrote are removed (see
    :mod:`incad.run_folder`). The folder is locked for the whole run;
    ``force`` runs without the lock. ``extra_plugins`` are added to the strategy.
    ``parent_run_id`` nests the MLflow run under that run (``incad compare``).
    Under ``torchrun`` every process runs this; rank 0 alone locks, logs,
    registers and checkpoints (see :mod:`incad.distributed`).
    """
    if isinstance(run, RunConfig):
        run = resolve(run)
    config = run.config
    init_from_environment(config.seed, resolve_device(config.device))
    if config.training.batch_size % world_size():
        raise ConfigError(f"training.batch_size {config.training.batch_size} is the global batch: it must divide by the {world_size()} processes")
    output_dir = path_within(config.output_dir, config.name)
    if not is_main_process():
        return _run_in_folder(run, output_dir, False, resume, extra_plugins, parent_run_id)
    require_writable_outputs(config)
    with locked_run_folder(output_dir, force):
        return _run_in_folder(run, output_dir, show_progress, resume, extra_plugins, parent_run_id)


def without_tracking(config: RunConfig) -> RunConfig:
    """``config`` for a torchrun rank other than 0: it logs and registers nothing."""
    return config.model_copy(update={"tracking": config.tracking.model_copy(update={"enabled": False})})


def _run_in_folder(run: ResolvedRun, output_dir: Path, show_progress: bool, resume: bool, extra_plugins: tuple, parent_run_id: str | None) -> RunResult:
    config = run.config
    if config.tracking.registry.enabled and not config.tracking.enabled:
        raise ConfigError("tracking.registry.enabled needs tracking.enabled: true (the registry lives in the MLflow tracking store)")
    main = is_main_process()
    tracked = config if main else without_tracking(config)
    seed_everything(config.seed)
    device = rank_device(resolve_device(config.device))
    with main_process_first():
        run = run.with_data(prepare_data(config, show_progress))
    built = build_scenario(config, run.data)
    scenario = run.strategy.factory.adapt_scenario(built)
    matrices = ResultMatrices(scenario.class_order, scenario.num_steps)
    learner = create_learner(run, scenario.class_order)
    refuse_untrained(config, learner)
    if config.training.feature_cache == "disk":
        attach_disk_store(learner, store_folder(cache_root(config.dataset), run.data.root))
    plugins: list = list(extra_plugins)
    if show_progress:
        plugins.append(ProgressBarPlugin(["+".join(classes) for classes in scenario.step_classes]))
    strategy = create_strategy(run, learner, plugins, device, evaluator=build_evaluator(matrices, tracked))
    manifest = CheckpointManifest(output_dir)
    checkpoints = manifest.checkpoints
    config_json = config.model_dump(mode="json")
    step_seconds: list[float] = []
    first_step, resume_run_id = 0, None
    if resume:
        manifest.refuse_foreign()
        restored = resume_latest(checkpoints, strategy, matrices, config_json)
        first_step, resume_run_id, step_seconds = restored.step + 1, restored.mlflow_run_id, restored.step_seconds
    elif main:
        manifest.clear()
    with MlflowTracker(tracked, resume_run_id=resume_run_id, parent_run_id=parent_run_id) as tracker:
        benchmark = scenario.benchmark
        for step in range(first_step, scenario.num_steps):
            started = time.perf_counter()
            strategy.train(benchmark.train_stream[step])
            step_seconds.append(time.perf_counter() - started)
            if main:  # every test sample once, by one process; the other ranks take its matrices
                strategy.eval(benchmark.test_stream[: step + 1])
            matrices.values.update(from_main_process(matrices.values))
            if main:
                tracker.log_step(step, {"train_seconds": step_seconds[-1], **strategy.loss_terms, **learner.step_report()})
                if config.tracking.registry.enabled:
                    seen = [name for classes in scenario.step_classes[: step + 1] for name in classes]
                    register_step_model(config, learner, scenario.class_order, matrices, step, seen)
                manifest.record(step)
                save_checkpoint(checkpoints, step, strategy, matrices, config_json, tracker.run_id, step_seconds)
            barrier()
        summary = matrices.summary()
        if main:
            mlflow_run = {"run_id": tracker.run_id, "tracking_uri": resolve_tracking_uri(config.tracking.tracking_uri)} if tracker.run_id else None
            artifacts = write_run_report(
                output_dir, matrices, summary, step_seconds, scenario.class_order, built.skipped, learner.step_report(), built.shot_samples, mlflow_run
            )
            tracker.log_final(matrices, summary, artifacts)
    return RunResult(config, scenario, matrices, summary, step_seconds, output_dir, from_main_process(tracker.run_id), learner)
