"""Continual strategies: the template plus the plugins each strategy adds; importing this package registers the built-in ones.

``create_strategy`` builds the template a resolved run names (see :mod:`incad.strategies.registry`).
"""

from incad.strategies import cumulative, iuf, joint, naive, regularization, replay
from incad.strategies.base import Strategy, StrategyOptions
from incad.strategies.registry import STRATEGIES, create_strategy, register_strategy
from incad.strategies.template import AnomalyDetectionTemplate

__all__ = [
    "STRATEGIES",
    "AnomalyDetectionTemplate",
    "Strategy",
    "StrategyOptions",
    "create_strategy",
    "cumulative",
    "iuf",
    "joint",
    "naive",
    "regularization",
    "register_strategy",
    "replay",
]
