"""``strategy: cumulative``: each step retrains on the data of every step so far (no forgetting, growing cost)."""

from __future__ import annotations

from incad.plugins.rehearsal import CumulativeDataPlugin
from incad.strategies.base import Strategy
from incad.strategies.registry import register_strategy


@register_strategy("cumulative")
class Cumulative(Strategy):
    """Fine-tunes the current model on the union of all training data seen so far."""

    plugin = CumulativeDataPlugin
