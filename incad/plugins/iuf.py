"""IUF's incremental update (Tang et al., ECCV 2024) as an Avalanche plugin for any transformer-decoder learner.

The learner names the layers the update hooks into
(:meth:`incad.learners.base.Learner.decoder_middle_layers` and
:meth:`incad.learners.base.Learner.decoder_output_projections`).

As IUF's public code does it:

- base step: a semantic compression loss. The middle decoder layers' features,
  pooled per sample, fill a rolling buffer of at most ``buffer_samples`` rows
  (earlier batches detached); their singular values, normalised to sum 1, are
  penalised where they fall below ``threshold / C`` (0.1/256 for IUF's 256
  channels), weight 10. It pushes the decoder's features into a low-rank
  subspace, which leaves the other directions free for later objects.
- after every step: the outputs of each decoder layer's feed-forward output
  layer on that step's training data are stored (tokens, at most
  ``feature_rows`` per step, evenly strided), and the right singular vectors
  of everything stored so far give the projection for the next steps.
- incremental steps: plain SGD (a projected gradient stays projected only
  without Adam's per-coordinate scaling; no momentum, so the optimizer has no
  state); the gradients of every such output layer are projected in its output
  space, ``g <- g - sum_i (1 - w_i) u_i u_i^T g`` with ``u_i`` the i-th
  singular direction and ``w_i = log(i + 1) / log(C)`` (IUF's weights with
  C = 256): the top direction is removed entirely, weaker ones less and less;
  after every update all trainable parameters move towards the previous
  step's model by ``ema_alpha`` (0.05).

Three choices above are ours, not IUF's: per-sample pooling for the
compression buffer, token rows for the stored features, the EMA applied per
iteration.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from incad.plugins.contract import PluginHost, eval_pass
from incad.plugins.parameters import snapshot, trainable_parameters


def semantic_compression_loss(rows: Tensor, threshold: float) -> Tensor:
    """Sum of the normalised singular values of ``rows`` (N, C) that are below ``threshold``."""
    singular = torch.linalg.svdvals(rows)
    normalised = singular / singular.sum().clamp_min(1e-12)
    return normalised[normalised < threshold].sum()


def soft_projection(features: Tensor) -> Tensor:
    """(C, C) matrix removing ``1 - log(i+1)/log(C)`` of a vector's component along the i-th singular direction of ``features``."""
    channels = features.shape[1]
    _, _, directions = torch.linalg.svd(features, full_matrices=False)
    kept = torch.tensor([min(1.0, math.log(i + 1) / math.log(channels)) for i in range(directions.shape[0])], dtype=features.dtype)
    return torch.eye(channels, dtype=features.dtype) - directions.T @ torch.diag(1.0 - kept) @ directions


def evenly_strided(rows: Tensor, limit: int) -> Tensor:
    """At most ``limit`` rows spread over the whole matrix (deterministic: draws no random numbers)."""
    if rows.shape[0] <= limit:
        return rows
    return rows[torch.linspace(0, rows.shape[0] - 1, limit).long()]


class IUFPlugin(SupervisedPlugin):
    """Semantic compression in the base step; projected SGD plus EMA towards the previous model afterwards."""

    term_name = "semantic_compression"

    def __init__(
        self,
        output_layers: list[nn.Linear],
        middle_layers: list[nn.Module],
        compression_weight: float,
        compression_threshold: float,
        buffer_samples: int,
        feature_rows: int,
        incremental_lr: float,
        ema_alpha: float,
    ) -> None:
        super().__init__()
        self.compression_weight = compression_weight
        self.compression_threshold = compression_threshold
        self.buffer_samples = buffer_samples
        self.feature_rows = feature_rows
        self.incremental_lr = incremental_lr
        self.ema_alpha = ema_alpha
        self.output_layers = output_layers
        self.middle_layers = middle_layers
        self.middle_features: dict[int, Tensor] = {}
        self.compression_buffers: dict[int, Tensor] = {}
        self.collected: dict[int, list[Tensor]] | None = None
        self.stored_features: dict[int, Tensor] = {}
        self.projections: dict[int, Tensor] = {}
        self.previous: dict[str, Tensor] = {}
        for index, layer in enumerate(self.middle_layers):
            layer.register_forward_hook(self._keep_middle_features(index))
        for index, layer in enumerate(self.output_layers):
            layer.register_forward_hook(self._collect_output(index))

    def _keep_middle_features(self, index: int):
        def hook(module, inputs, output):
            if module.training:
                self.middle_features[index] = output

        return hook

    def _collect_output(self, index: int):
        def hook(module, inputs, output):
            if self.collected is not None:
                self.collected[index].append(output.detach().reshape(-1, output.shape[-1]))

        return hook

    @staticmethod
    def incremental(strategy: PluginHost) -> bool:
        return strategy.clock.train_exp_counter > 0

    def before_training_exp(self, strategy: PluginHost, **kwargs) -> None:
        if self.incremental(strategy):
            strategy.optimizer = torch.optim.SGD(strategy.model.parameters(), lr=self.incremental_lr)

    def before_backward(self, strategy: PluginHost, **kwargs) -> None:
        if self.incremental(strategy):
            self.middle_features.clear()  # the compression loss is the base step's only: hold no activations
            return
        if not self.middle_features:
            return
        loss = strategy.loss.new_zeros(())
        for index, features in self.middle_features.items():
            pooled = features.mean(dim=1)
            rows = torch.cat([self.compression_buffers.get(index, pooled.new_zeros(0, pooled.shape[1])), pooled])[-self.buffer_samples :]
            loss = loss + semantic_compression_loss(rows, self.compression_threshold / rows.shape[1])
            self.compression_buffers[index] = rows.detach()
        self.middle_features.clear()
        strategy.loss_terms[self.term_name] = float(loss.detach())
        strategy.loss = strategy.loss + self.compression_weight * loss

    def before_update(self, strategy: PluginHost, **kwargs) -> None:
        if self.incremental(strategy):
            self.project_gradients()

    @torch.no_grad()
    def project_gradients(self) -> None:
        """Remove from every output layer's gradient its weighted component in the stored feature subspace."""
        for index, layer in enumerate(self.output_layers):
            projection = self.projections[index].to(layer.weight.device)
            for parameter in (layer.weight, layer.bias):
                if parameter is not None and parameter.grad is not None:
                    parameter.grad.copy_(projection @ parameter.grad)

    @torch.no_grad()
    def after_update(self, strategy: PluginHost, **kwargs) -> None:
        if not self.incremental(strategy):
            return
        for name, parameter in trainable_parameters(strategy.model).items():
            parameter.lerp_(self.previous[name].to(parameter.device), self.ema_alpha)

    @torch.no_grad()
    def after_training_exp(self, strategy: PluginHost, **kwargs) -> None:
        self.middle_features.clear()
        self.compression_buffers.clear()
        learner = strategy.model
        self.collected = {index: [] for index in range(len(self.output_layers))}
        with eval_pass(strategy, strategy.eval_mb_size) as batches:
            for batch in batches:
                learner(batch)
        new_rows = {index: evenly_strided(torch.cat(rows).cpu(), self.feature_rows) for index, rows in self.collected.items()}
        self.collected = None
        for index, rows in new_rows.items():
            stored = self.stored_features.get(index)
            self.stored_features[index] = rows if stored is None else torch.cat([stored, rows])
        self._update_projections()
        self.previous = snapshot(learner)

    def _update_projections(self) -> None:
        self.projections = {index: soft_projection(features) for index, features in self.stored_features.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"stored_features": self.stored_features, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stored_features = dict(state["stored_features"])
        self.previous = dict(state["previous"])
        self._update_projections()
