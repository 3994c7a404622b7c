"""LwF for reconstruction-based anomaly detection: distil the previous model's reconstructions.

Avalanche's LwF distils class logits. A reconstruction learner's knowledge of
earlier objects is in what it reconstructs, so from the second step on this
plugin adds the mean squared error between the current model's trainable
outputs (reconstructions, mapped features, and whatever else the learner's
parameters produce; frozen backbone features are left out) and those the
frozen previous model produces for the same batch of current data, averaged
over the outputs. Any gradient-trained learner qualifies.

The previous model is not a module copy: it is a snapshot of the trainable
parameters run through the same module with ``torch.func.functional_call``
(shared frozen backbone and feature cache, and a plain dict of tensors to
checkpoint). It runs in eval mode, so its reconstructions are of the clean
features: the target a well-behaved previous model produces.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.func import functional_call

from incad.data.sample import Batch
from incad.errors import ConfigError
from incad.learners.base import Learner
from incad.plugins.contract import PluginHost, eval_mode
from incad.plugins.parameters import snapshot


class ReconstructionDistillationPlugin(SupervisedPlugin):
    """Adds ``weight * MSE(current outputs, previous model's outputs)`` from the second step on."""

    term_name = "distillation"

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.previous: dict[str, Tensor] = {}

    def before_backward(self, strategy: PluginHost, **kwargs) -> None:
        if not self.previous:
            strategy.loss_terms[self.term_name] = 0.0
            return
        value = self.distillation(strategy.model, strategy.mb_output, strategy.mbatch)
        strategy.loss_terms[self.term_name] = float(value.detach())
        strategy.loss = strategy.loss + self.weight * value

    def distillation(self, learner: Learner, outputs: dict[str, Tensor], batch: Batch) -> Tensor:
        keys = [key for key, output in outputs.items() if output.requires_grad]
        if not keys:
            raise ConfigError(
                f"strategy 'lwf' distils the outputs the learner's trainable parameters produce; learner "
                f"{type(learner).__name__} has none among {sorted(outputs)}. Use another strategy with this learner."
            )
        with torch.no_grad(), eval_mode(learner):
            previous = functional_call(learner, self.previous, (batch,), strict=False)
        return sum(F.mse_loss(outputs[key], previous[key]) for key in keys) / len(keys)

    def after_training_exp(self, strategy: PluginHost, **kwargs) -> None:
        self.previous = snapshot(strategy.model)

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = dict(state["previous"])
