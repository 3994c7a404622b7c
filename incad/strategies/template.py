"""Anomaly-detection strategy template on Avalanche's ``SupervisedTemplate``.

Avalanche's supervised problem indexes batches positionally and computes a
classification loss. This template keeps Avalanche's training loop, hooks and
plugin system, but:

- batches are :class:`incad.data.sample.Batch` objects with named fields,
  built by our ``collate`` in both dataloaders;
- ``forward`` returns the learner's training outputs while training and its
  raw anomaly maps while evaluating;
- before the epochs of each experience the learner's ``fit`` runs on that
  experience's training data (offline stages such as codebooks), and after
  them its ``calibrate`` (gradient-free statistics of the trained learner);
  a learner with no trainable parameter (a memory bank) runs no epoch;
- under ``torchrun`` (:mod:`incad.distributed`) each rank trains on its shard
  of the experience through Avalanche's ``SingleDatasetDataLoader`` with the
  learner wrapped by ``DistributedHelper.wrap_model`` (DDP); the offline
  stages read the whole experience on every rank and end with rank 0's state;
- ``criterion`` is the weighted sum of the loss terms the learner declares
  (:mod:`incad.learners.terms`), each recorded by name in ``loss_terms`` for
  logging; strategy plugins add their own terms to ``strategy.loss`` and
  record them there too. A learner with ``skip_non_finite_gradients`` has
  an update whose gradients are not all finite skipped. What plugins may read from the template is
  :class:`incad.plugins.contract.PluginHost`;
- ``train`` (``fit`` and ``calibrate`` as their own phases) reads no test
  sample and ``eval`` is the one phase that may (:mod:`incad.data.access`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader
from avalanche.core import BasePlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor
from torch.utils.data import DataLoader

from incad.data.access import EVALUATION, data_phase
from incad.data.sample import Batch, collate
from incad.distributed import is_distributed, sync_state_from_main, wrap_for_training
from incad.learners.base import Learner
from incad.learners.terms import evaluate_terms
from incad.plugins.contract import eval_pass


class AnomalyDetectionTemplate(SupervisedTemplate):
    """Continual training of a :class:`Learner` on normal samples, evaluation by anomaly maps."""

    def __init__(
        self,
        *,
        learner: Learner,
        optimizer: torch.optim.Optimizer,
        train_epochs: int,
        train_mb_size: int,
        eval_mb_size: int,
        device: str | torch.device = "cpu",
        plugins: Sequence[BasePlugin] | None = None,
        grad_clip: float | None = None,
        num_workers: int = 0,
        evaluator: EvaluationPlugin | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__(
            model=learner,
            optimizer=optimizer,
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=list(plugins or []),
            evaluator=evaluator or EvaluationPlugin(loggers=[]),
        )
        self.grad_clip = grad_clip
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.loss_terms: dict[str, float] = {}
        self.data_parallel: torch.nn.Module | None = None  # the DDP wrapper of the learner under torchrun, made at the first training

    @property
    def mb_x(self) -> Batch:
        return self.mbatch

    @property
    def mb_y(self) -> Tensor:
        """The object id: the only class-like target of anomaly detection on normal data."""
        return self.mbatch.object_id

    def make_train_dataloader(self, shuffle: bool = True, **kwargs) -> None:
        if is_distributed():  # this rank's shard (Avalanche's DistributedSampler); train_mb_size is already the per-rank batch
            self.dataloader = SingleDatasetDataLoader(
                self.adapted_dataset, batch_size=self.train_mb_size, shuffle=shuffle and self.shuffle, num_workers=self.num_workers, collate_fn=collate
            )
            return
        self.dataloader = self.loader(self.train_mb_size, shuffle and self.shuffle)

    def make_eval_dataloader(self, **kwargs) -> None:
        self.dataloader = self.loader(self.eval_mb_size, shuffle=False)

    def loader(self, batch_size: int, shuffle: bool) -> DataLoader:
        """A plain loader whose batches are named-field :class:`Batch` objects."""
        return DataLoader(
            self.adapted_dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
        )

    def train(self, experiences, eval_streams=None, **kwargs):
        """Training, its plugins' hooks included, reads no test sample (:mod:`incad.data.access`)."""
        with data_phase("train"):
            return super().train(experiences, eval_streams, **kwargs)

    def eval(self, exp_list, **kwargs):
        """The only phase in which the test split is readable."""
        with data_phase(EVALUATION):
            return super().eval(exp_list, **kwargs)

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        self._run_offline_stage("fit", self.model.fit)
        if any(parameter.requires_grad for parameter in self.model.parameters()):
            if is_distributed() and self.data_parallel is None:
                self.data_parallel = wrap_for_training(self.model)
            super()._train_exp(experience, eval_streams, **kwargs)
        self._run_offline_stage("calibrate", self.model.calibrate)

    @torch.no_grad()
    def _run_offline_stage(self, phase: str, stage) -> None:
        """Run a learner's gradient-free stage (``fit`` or ``calibrate``) on this experience's data, in eval mode.

        Under torchrun every rank reads the whole experience (``eval_pass`` is
        not sharded) and the stage ends with rank 0's state on every rank.
        """
        with data_phase(phase), eval_pass(self, self.eval_mb_size) as batches:
            stage(batches)
        sync_state_from_main(self.model)

    def _unpack_minibatch(self) -> None:
        self.mbatch = self.mbatch.to(self.device)

    def forward(self):
        if self.is_training:
            return (self.model if self.data_parallel is None else self.data_parallel)(self.mbatch)
        return self.model.anomaly_map(self.mbatch)

    def criterion(self) -> Tensor:
        if not self.is_training:
            return self._make_empty_loss()
        values, total = evaluate_terms(self.model, self.mb_output, self.mbatch)
        self.loss_terms = {name: float(value.detach()) for name, value in values.items()}
        return total

    def optimizer_step(self) -> None:
        if self.model.skip_non_finite_gradients and not all(
            torch.isfinite(parameter.grad).all() for parameter in self.model.parameters() if parameter.grad is not None
        ):
            return
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        super().optimizer_step()
