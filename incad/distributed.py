"""Data-parallel runs under ``torchrun``, through Avalanche's ``DistributedHelper``.

``torchrun --nproc-per-node N -m incad run x.yaml`` starts N processes with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :func:`init_from_environment`
joins them into one process group (gloo on CPU, nccl on CUDA) with Avalanche's
helper, which also seeds every process alike. What each part of a run does then:

- training: each rank reads its shard of the experience through Avalanche's
  ``SingleDatasetDataLoader`` (a ``DistributedSampler``), ``training.batch_size``
  is the global batch (each rank takes ``batch_size / N``), and the learner is
  wrapped in DDP by ``DistributedHelper.wrap_model`` for the training forward,
  so gradients are averaged over the global batch;
- offline stages (``fit``, ``calibrate``): every rank reads the whole
  experience, in the same order, and runs the stage; rank 0's learner state is
  then broadcast, so codebooks, memory banks and score scales are one state on
  every rank, built from all the experience's data;
- evaluation: rank 0 evaluates every test sample once, exactly as a single
  process does, and broadcasts the step x object matrices;
- rank 0 alone writes: the run lock, checkpoints, MLflow logging and the model
  registry. ``--resume`` reads the same checkpoint on every rank.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from avalanche.distributed import DistributedHelper

WORLD_SIZE_VARIABLE = "WORLD_SIZE"


def launched_by_torchrun() -> bool:
    """True in a process that ``torchrun`` (or another launcher setting ``WORLD_SIZE`` > 1) started."""
    return int(os.environ.get(WORLD_SIZE_VARIABLE, "1")) > 1


def init_from_environment(seed: int, device: torch.device) -> None:
    """Join the launcher's process group once per process (no-op in a single process)."""
    if launched_by_torchrun() and not DistributedHelper.is_distributed:
        DistributedHelper.init_distributed(random_seed=seed, use_cuda=device.type == "cuda")


def is_distributed() -> bool:
    return DistributedHelper.is_distributed


def is_main_process() -> bool:
    return DistributedHelper.is_main_process


def world_size() -> int:
    return DistributedHelper.world_size


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: Avalanche's ``cuda:<rank>`` under CUDA, else ``device``."""
    return DistributedHelper.make_device() if is_distributed() and device.type == "cuda" else device


def barrier() -> None:
    DistributedHelper.barrier()


def from_main_process(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself in a single process)."""
    return DistributedHelper.broadcast_object(value)


def sync_state_from_main(module: torch.nn.Module) -> None:
    """Make ``module``'s state (parameters and growing buffers included) rank 0's on every rank."""
    if is_distributed():
        module.load_state_dict(from_main_process({key: value.cpu() for key, value in module.state_dict().items()}))


def wrap_for_training(module: torch.nn.Module) -> torch.nn.Module:
    """The DDP wrapper of ``module`` under torchrun, ``module`` itself otherwise."""
    return DistributedHelper.wrap_model(module)


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block (e.g. generating or preprocessing the data into the shared cache) before the other ranks.

    Barriers only, unlike Avalanche's ``main_process_first``, which also steps
    every random generator and so would change the run's random draws.
    """
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()
