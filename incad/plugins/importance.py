"""Parameter-importance regularisation for any learner: EWC, MAS and SI.

Avalanche's EWC and MAS recompute ``criterion(out, y)`` or the output norm from
positional ``(x, y, t)`` batches; our batches have named fields and our losses
are the learner's own terms. So the importance pass is written once here
(:class:`ImportancePenaltyPlugin`), with the two methods differing only in
the quantity they differentiate and how a gradient becomes importance:

- EWC: the learner's own loss (the weighted sum of its declared terms,
  :func:`incad.learners.terms.total_loss`), importance = squared gradient
  (empirical Fisher), accumulated online over steps;
- MAS: the squared L2 norm of the learner's trainable outputs (MAS is
  unsupervised: the sensitivity of what the model produces), importance =
  absolute gradient, blended ``alpha * previous + (1 - alpha) * current`` as
  in Avalanche's ``MASPlugin``.

The penalty is ``sum_i importance_i * (theta_i - theta*_i)^2`` with ``theta*``
the parameters at the end of the previous step. The importance pass runs in
eval mode (no jitter, no dropout) over the step's training data.

SI shares the penalty; its importance is the path integral of gradient x
update of the training loss, accumulated during the step (see its class).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

from incad.data.sample import Batch
from incad.learners.base import Learner
from incad.learners.terms import total_loss
from incad.plugins.contract import PluginHost, eval_pass
from incad.plugins.parameters import snapshot, trainable_parameters


class ImportancePenaltyPlugin(SupervisedPlugin):
    """Quadratic pull of each parameter towards its previous-step value, weighted by its importance."""

    term_name: ClassVar[str]

    def __init__(self, weight: float, previous_weight: float, current_weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.previous_weight = previous_weight
        self.current_weight = current_weight
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    def sensitivity(self, learner: Learner, batch: Batch) -> Tensor:  # pragma: no cover - interface
        """The scalar whose gradient measures how much each parameter matters."""
        raise NotImplementedError

    def importance_of(self, gradient: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def penalty(self, learner: Learner) -> Tensor:
        parameters = trainable_parameters(learner)
        return sum((self.importance[name] * (parameters[name] - anchor).pow(2)).sum() for name, anchor in self.anchor.items())

    def before_backward(self, strategy: PluginHost, **kwargs) -> None:
        if not self.anchor:
            return
        value = self.penalty(strategy.model)
        strategy.loss_terms[self.term_name] = float(value.detach())
        strategy.loss = strategy.loss + self.weight * value

    def after_training_exp(self, strategy: PluginHost, **kwargs) -> None:
        current = self.estimate_importance(strategy)
        self.importance = {
            name: self.previous_weight * self.importance[name] + self.current_weight * value if name in self.importance else value
            for name, value in current.items()
        }
        self.anchor = snapshot(strategy.model)

    def estimate_importance(self, strategy: PluginHost) -> dict[str, Tensor]:
        """Mean per-batch importance over the experience's training data, in eval mode."""
        learner = strategy.model
        parameters = trainable_parameters(learner)
        totals = {name: torch.zeros_like(parameter) for name, parameter in parameters.items()}
        batches = 0
        with eval_pass(strategy, strategy.train_mb_size) as device_batches:
            for batch in device_batches:
                learner.zero_grad(set_to_none=True)
                self.sensitivity(learner, batch).backward()
                for name, parameter in parameters.items():
                    if parameter.grad is not None:
                        totals[name] += self.importance_of(parameter.grad)
                batches += 1
        learner.zero_grad(set_to_none=True)
        return {name: total / max(batches, 1) for name, total in totals.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance, self.anchor = dict(state["importance"]), dict(state["anchor"])


class EWCPlugin(ImportancePenaltyPlugin):
    """Online EWC on the learner's own loss: importance = decay * previous + squared gradient."""

    term_name = "ewc"

    def __init__(self, weight: float, decay: float) -> None:
        super().__init__(weight, previous_weight=decay, current_weight=1.0)

    def sensitivity(self, learner: Learner, batch: Batch) -> Tensor:
        return total_loss(learner, learner(batch), batch)

    def importance_of(self, gradient: Tensor) -> Tensor:
        return gradient.pow(2)


class MASPlugin(ImportancePenaltyPlugin):
    """MAS: importance = |gradient| of the squared norm of the learner's trainable outputs."""

    term_name = "mas"

    def __init__(self, weight: float, alpha: float) -> None:
        super().__init__(weight, previous_weight=alpha, current_weight=1.0 - alpha)

    def sensitivity(self, learner: Learner, batch: Batch) -> Tensor:
        produced = [output for output in learner(batch).values() if output.requires_grad]
        return sum(output.pow(2).flatten(1).sum(1).mean() for output in produced)

    def importance_of(self, gradient: Tensor) -> Tensor:
        return gradient.abs()


class SynapticIntelligence(ImportancePenaltyPlugin):
    """SI: each parameter's contribution to the loss decrease along its training path.

    During a step, ``path += -grad * delta`` after every update; at its end the
    step's importance is ``relu(path) / (total_change^2 + damping)``, summed
    over steps. Written here rather than reusing Avalanche's
    ``SynapticIntelligencePlugin``: on a CPU its ``param.detach().cpu()``
    snapshots alias the live parameters, so every update looks like zero
    change and the importance stays 0.
    """

    term_name = "si"

    def __init__(self, weight: float, damping: float) -> None:
        super().__init__(weight, previous_weight=1.0, current_weight=1.0)
        self.damping = damping
        self.step_start: dict[str, Tensor] = {}
        self.before_update_values: dict[str, Tensor] = {}
        self.path: dict[str, Tensor] = {}

    def before_training_exp(self, strategy: PluginHost, **kwargs) -> None:
        self.step_start = snapshot(strategy.model)
        self.path = {name: torch.zeros_like(value) for name, value in self.step_start.items()}

    def before_update(self, strategy: PluginHost, **kwargs) -> None:
        self.before_update_values = snapshot(strategy.model)

    @torch.no_grad()
    def after_update(self, strategy: PluginHost, **kwargs) -> None:
        for name, parameter in trainable_parameters(strategy.model).items():
            if parameter.grad is not None:
                self.path[name] -= parameter.grad * (parameter - self.before_update_values[name])

    def estimate_importance(self, strategy: PluginHost) -> dict[str, Tensor]:
        current = trainable_parameters(strategy.model)
        return {
            name: path.clamp_min(0) / ((current[name].detach() - self.step_start[name]).pow(2) + self.damping)
            for name, path in self.path.items()
        }
