"""Shared pieces of the benchmark scripts: the conditions they ran under, random inputs, inference
speed, runs in their own process, tables.

Each measured run happens in a fresh spawned process, so the peak resident memory
it reports (``ru_maxrss``) is that run's own and not the high-water mark of
whatever ran before it in the benchmark.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from incad.data.sample import Batch
from incad.learners.base import Learner
from incad.models.backbones.cache import FeatureCache

if TYPE_CHECKING:
    from incad.resolve import ResolvedRun
    from incad.runner import RunResult

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = REPO_ROOT / "experiments" / "quickstart.yaml"


def add_threads_option(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """``--threads``: torch's intra-op threads (numba's follow them); ``several`` takes a list measured in turn."""
    if several:
        parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to measure in turn")
    else:
        parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")


def start_benchmark(threads: int | None) -> None:
    """Apply ``--threads`` (here and in processes spawned later) and print the conditions of the measurement."""
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # spawned runs read it when torch starts
    print(machine_conditions(), flush=True)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_conditions() -> str:
    """torch threads, CPU model, cores and load average, and a warning when the load exceeds the cores.

    Figures taken while other processes compete for the cores are not comparable with quiet ones.
    """
    cores = os.cpu_count() or 1
    load = os.getloadavg()
    lines = [
        f"conditions: torch {torch.__version__}, {torch.get_num_threads()} torch threads, {cpu_model()}, {cores} cores, "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"
    ]
    if load[0] > cores:
        lines.append(f"WARNING: the load average {load[0]:.2f} is above the {cores} cores: these figures are taken under load and are not comparable")
    return "\n".join(lines)


def random_batch(size: int, count: int = 16) -> Batch:
    """A batch of random RGB, depth and point clouds (every pixel valid): inputs for speed measurements."""
    return Batch(
        image=torch.rand(count, 3, size, size), mask=torch.zeros(count, size, size), label=torch.zeros(count, dtype=torch.long),
        object_id=torch.zeros(count, dtype=torch.long), defect_type=["good"] * count, path=[f"image-{i}" for i in range(count)],
        depth=torch.rand(count, 1, size, size), xyz=torch.rand(count, 3, size, size), valid=torch.ones(count, size, size, dtype=torch.bool),
    )


def learner_images_per_second(learner: Learner, size: int, repeats: int = 3) -> float:
    """Anomaly maps per second of a batch of 16 new images: every feature cache off, one warm-up batch."""
    learner.eval()
    for name, value in list(vars(learner).items()):
        if isinstance(value, FeatureCache):
            setattr(learner, name, None)
    return images_per_second(learner.anomaly_map, size, module_device(learner), repeats)


def images_per_second(infer: Callable[[Batch], object], size: int, device: torch.device, repeats: int = 3) -> float:
    """Calls per second of ``infer`` on a random batch of 16 images on ``device``, after one warm-up call."""
    batch = random_batch(size).to(device)
    with torch.inference_mode():
        infer(batch)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            infer(batch)
        synchronize(device)
    return repeats * len(batch) / (time.perf_counter() - started)


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's tensors live (CPU for a module without any)."""
    tensor = next(iter(module.state_dict().values()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stops when the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def in_own_process(function: Callable, *args: object) -> object:
    """``function(*args)`` in a fresh spawned process (module-level functions only).

    The process is not a daemon (unlike a ``multiprocessing.Pool`` worker), so
    the run may start processes of its own, as dataset preprocessing does.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_figures(scenario: Path, overrides: Sequence[str]) -> dict[str, float]:
    """One whole run (meant for :func:`in_own_process`): final means, FM, training time, speed, peak memory."""
    from incad.resolve import load_run

    return measured_run(load_run(scenario, overrides=list(overrides)))[1]


def measured_run(run: ResolvedRun) -> tuple[RunResult, dict[str, float]]:
    """Run ``run`` and measure it: the run's result and its figures (see :func:`run_figures`)."""
    from incad.runner import run_experiment

    result = run_experiment(run, show_progress=False)
    summary = result.summary
    return result, {
        "i_auroc": summary["i_auroc/final_mean"],
        "p_auroc": summary["p_auroc/final_mean"],
        "aupro_30": summary["aupro_30/final_mean"],
        "aupro_1": summary["aupro_1/final_mean"],
        "fm": summary["i_auroc/fm"],
        "train_s": sum(result.step_seconds),
        "images_per_s": learner_images_per_second(result.learner, result.config.dataset.image_size),
        "peak_gib": peak_gib(),
    }


def inference_figures(scenario: Path, overrides: Sequence[str], size: int) -> dict[str, float]:
    """Images/s and peak memory of inference alone at ``size`` px (meant for :func:`in_own_process`)."""
    from incad.learners import create_learner
    from incad.resolve import load_run

    run = load_run(scenario, overrides=[*overrides, f"dataset.image_size={size}"])
    scenario_config = run.config.scenario
    # Without data there is no class list to read when the YAML gives none; inference speed does not depend on the names.
    names = list(scenario_config.classes) or [f"object_{index}" for index in range(scenario_config.num_classes)]
    learner = create_learner(run, names)
    return {"images_per_s": learner_images_per_second(learner, size), "peak_gib": peak_gib()}


# How each figure is printed: metrics to 3 decimals, seconds, speeds and MiB to 1, GiB to 2.
FIGURE_FORMATS = {
    "train_s": ".1f", "fit_s": ".1f", "coreset_s": ".1f", "images_per_s": ".1f", "infer_images_per_s": ".1f",
    "peak_gib": ".2f", "infer_peak_gib": ".2f", "state_mib": ".1f", "train_ratio": ".2f",
}


def markdown_table(columns: dict[str, str], rows: dict[str, dict[str, float]], first: str) -> str:
    """A markdown table: one row per key of ``rows``, ``columns`` maps figure names to headers; a missing figure shows "–"."""
    lines = [f"| {first} | " + " | ".join(columns.values()) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in rows.items():
        cells = ["–" if row.get(key) is None else format(row[key], FIGURE_FORMATS.get(key, ".3f")) for key in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
