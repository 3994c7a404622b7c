"""The one rule for a learner's objective: a list of named, weighted loss terms.

A learner declares every term of its training objective, the core one
(reconstruction MSE, mapping cosine) and the method's extra ones (IB-IUMAD's
eq. 10 lambdas, Uni-RCM's small MSE) alike, as :class:`LossTerm` objects built
from its YAML options; a term whose weight is 0 is left out (:func:`declared`), so it is not
computed. The strategy template logs each term's value under its name and
trains on :func:`evaluate_terms`' weighted sum; EWC differentiates the same sum
through :func:`total_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from incad.data.sample import Batch

if TYPE_CHECKING:
    from incad.learners.base import Learner


@dataclass(frozen=True)
class LossTerm:
    """``weight * compute(outputs, batch)`` enters the objective; ``name`` is what the run logs."""

    name: str
    weight: float
    compute: Callable[[dict[str, Tensor], Batch], Tensor]


def declared(terms: Iterable[LossTerm]) -> list[LossTerm]:
    """The terms that enter the objective: a term whose weight is 0 is switched off, so it is never computed."""
    return [term for term in terms if term.weight > 0]


def evaluate_terms(learner: "Learner", outputs: dict[str, Tensor], batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
    """Each declared term's unweighted value by name, and the objective: ``weight * value`` summed in declaration order."""
    values: dict[str, Tensor] = {}
    total = 0
    for term in learner.loss_terms():
        values[term.name] = term.compute(outputs, batch)
        total = total + term.weight * values[term.name]
    return values, total


def total_loss(learner: "Learner", outputs: dict[str, Tensor], batch: Batch) -> Tensor:
    """The learner's whole training objective on ``outputs`` of ``batch``."""
    return evaluate_terms(learner, outputs, batch)[1]
