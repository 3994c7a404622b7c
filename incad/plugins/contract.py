"""What a plugin may read from the strategy, and the one way to pass over an experience's data again.

:class:`PluginHost` declares the members of
:class:`incad.strategies.template.AnomalyDetectionTemplate` that the plugins of
:mod:`incad.plugins` use (Avalanche's own names where Avalanche defines them);
a plugin reaches the learner's internals only through the hooks the learner
declares (:class:`incad.learners.base.Learner`). Extra passes over the
experience's training data (offline fits, importance estimation, stored
features) all go through :func:`eval_pass`, so each runs in eval mode, in the
data's order, and leaves the learner's mode as it found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from avalanche.benchmarks import DatasetExperience
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.training.plugins.clock import Clock
from torch import Tensor, nn
from torch.utils.data import DataLoader

from incad.data.sample import Batch
from incad.learners.base import Learner


class PluginHost(Protocol):
    """The strategy as the plugins of :mod:`incad.plugins` see it."""

    model: Learner
    device: torch.device
    train_mb_size: int
    eval_mb_size: int
    optimizer: torch.optim.Optimizer
    clock: Clock
    experience: DatasetExperience
    adapted_dataset: AvalancheDataset
    mbatch: Batch
    mb_output: dict[str, Tensor]
    loss: Tensor
    loss_terms: dict[str, float]
    """The value of every term of this iteration's loss by name, for logging: the learner's declared terms and those plugins add."""

    def loader(self, batch_size: int, shuffle: bool) -> DataLoader:
        """A loader of the experience's (adapted) training data as named-field batches."""
        ...


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; its previous train/eval mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextmanager
def eval_pass(strategy: PluginHost, batch_size: int) -> Iterator[Iterator[Batch]]:
    """The experience's training data once more, unshuffled and on the strategy's device, with the learner in eval mode."""
    with eval_mode(strategy.model):
        yield (batch.to(strategy.device) for batch in strategy.loader(batch_size, shuffle=False))
