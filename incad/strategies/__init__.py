"""Continual strategies: the template plus the plugins each strategy adds, registered in ``STRATEGIES``."""

from incad.strategies import cumulative, iuf, joint, naive, regularization, replay
from incad.strategies.base import Strategy, StrategyOptions
from incad.strategies.template import AnomalyDetectionTemplate

__all__ = ["AnomalyDetectionTemplate", "Strategy", "StrategyOptions", "cumulative", "iuf", "joint", "naive", "regularization", "replay"]
