"""Strategies that act on the training data: cumulative training and replay of normal samples.

Both build on Avalanche: cumulative training concatenates the experiences'
datasets the way Avalanche's ``Cumulative`` template does (here as a plugin on
dataset adaptation, so it composes with the anomaly-detection template), and
replay is Avalanche's ``ReplayPlugin`` and ``ReplayDataLoader`` (the datasets
carry our ``collate``, so replayed batches are named-field ``Batch``es too)
with a buffer that stores sample indices instead of dataset views, so its
state is a few integer tensors that a ``weights_only`` checkpoint can hold.
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.benchmarks.utils import concat_datasets
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ExemplarsBuffer
from torch import Tensor

from incad.plugins.contract import PluginHost


class CumulativeDataPlugin(SupervisedPlugin):
    """Each step trains on the union of the training data of every step so far.

    The union is rebuilt from the experience's own stream, so the plugin has
    no state and a resumed run trains on the same data.
    """

    def after_train_dataset_adaptation(self, strategy: PluginHost, **kwargs) -> None:
        experience = strategy.experience
        seen = experience.origin_stream[: experience.current_experience + 1]
        strategy.adapted_dataset = concat_datasets([past.dataset for past in seen]).train()


class IndexedBalancedBuffer(ExemplarsBuffer):
    """A random memory of normal training samples, balanced over experiences or over classes.

    With ``per_class`` every class seen so far keeps that many samples (the
    memory grows with the classes); otherwise ``max_size`` samples are split
    evenly over the experiences seen so far (Avalanche's experience-balanced
    policy, remainder to the earliest). Each group is ``(experience index,
    sample indices in random order)``; shrinking a group keeps its first
    indices, which is a uniform random subset, as reservoir sampling gives.
    """

    def __init__(self, max_size: int | None = None, per_class: int | None = None) -> None:
        if (max_size is None) == (per_class is None):
            raise ValueError("give exactly one of max_size and per_class")
        super().__init__(max_size or 0)
        self.per_class = per_class
        self.groups: dict[int, tuple[int, Tensor]] = {}
        self.stream = None

    def post_adapt(self, agent, exp) -> None:
        self.stream = exp.origin_stream
        step = exp.current_experience
        order = torch.randperm(len(exp.dataset))
        if self.per_class is None:
            self.groups[step] = (step, order)
        else:
            targets = torch.as_tensor(list(exp.dataset.targets))[order]
            for object_id in targets.unique().tolist():
                self.groups[object_id] = (step, order[targets == object_id])
        self.resize(agent, self.max_size)

    def group_sizes(self) -> list[int]:
        if self.per_class is not None:
            return [self.per_class] * len(self.groups)
        share, remainder = divmod(self.max_size, len(self.groups))
        return [share + (index < remainder) for index in range(len(self.groups))]

    def resize(self, strategy, new_size: int) -> None:
        self.max_size = new_size
        sizes = self.group_sizes()
        self.groups = {key: (step, indices[:size]) for (key, (step, indices)), size in zip(self.groups.items(), sizes)}

    @property
    def buffer(self):
        return concat_datasets([self.stream[step].dataset.subset(indices.tolist()) for step, indices in self.groups.values()])


class ReplayBufferPlugin(ReplayPlugin):
    """Avalanche's replay with an :class:`IndexedBalancedBuffer`; each batch = current samples + replayed ones."""

    def __init__(self, buffer: IndexedBalancedBuffer, batch_size_mem: int | None = None) -> None:
        super().__init__(mem_size=buffer.max_size, batch_size_mem=batch_size_mem, storage_policy=buffer)

    def before_training_exp(self, strategy: PluginHost, **kwargs) -> None:
        self.storage_policy.stream = strategy.experience.origin_stream
        super().before_training_exp(strategy, **kwargs)

    def after_training_exp(self, strategy: PluginHost, **kwargs) -> None:
        """Avalanche's own hook calls the storage policy's deprecated ``update``; call ``post_adapt`` directly."""
        self.storage_policy.post_adapt(strategy, strategy.experience)

    def state_dict(self) -> dict[str, Any]:
        return {"max_size": self.storage_policy.max_size, "groups": dict(self.storage_policy.groups)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.storage_policy.max_size = state["max_size"]
        self.storage_policy.groups = dict(state["groups"])
