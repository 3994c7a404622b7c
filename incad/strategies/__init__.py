"""Continual strategies: the template plus the plugins each strategy adds, registered in ``STRATEGIES``."""

from incad.strategies import naive
from incad.strategies.template import AnomalyDetectionTemplate

__all__ = ["AnomalyDetectionTemplate", "naive"]
