"""``strategy: naive``: plain fine-tuning on each step's data, the lower bound of forgetting."""

from __future__ import annotations

from incad.strategies.base import Strategy
from incad.strategies.registry import register_strategy


@register_strategy("naive")
class Naive(Strategy):
    """No plugin: the template alone fine-tunes the learner step after step."""
