"""``strategy: naive``: plain fine-tuning on each step's data, the lower bound of forgetting."""

from __future__ import annotations

from incad.registry import STRATEGIES
from incad.strategies.base import Strategy


@STRATEGIES.register("naive")
class Naive(Strategy):
    """No plugin: the template alone fine-tunes the learner step after step."""
