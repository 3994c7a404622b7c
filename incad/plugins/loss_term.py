"""A method's extra loss term as an Avalanche plugin.

Methods such as IB-IUMAD add terms (classifier cross-entropy, an information
bottleneck KL) to the learner's core objective. Each term is a plugin so a YAML
can switch it on or off and weight it, and so it composes with any strategy.
"""

from __future__ import annotations

from collections.abc import Callable

from avalanche.core import SupervisedPlugin
from torch import Tensor

from incad.data.sample import Batch

LossTerm = Callable[[dict[str, Tensor], Batch], Tensor]


class LossTermPlugin(SupervisedPlugin):
    """Adds ``weight * term(outputs, batch)`` to the training loss before backward.

    ``term`` reads the learner's named training outputs (``strategy.mb_output``)
    and the named-field batch; its value is recorded in ``strategy.loss_terms``
    under ``name`` for logging.
    """

    def __init__(self, name: str, term: LossTerm, weight: float = 1.0) -> None:
        super().__init__()
        self.name = name
        self.term = term
        self.weight = weight

    def before_backward(self, strategy, **kwargs) -> None:
        value = self.term(strategy.mb_output, strategy.mbatch)
        strategy.loss_terms[self.name] = float(value.detach())
        strategy.loss = strategy.loss + self.weight * value
