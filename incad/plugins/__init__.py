"""Avalanche plugins that add method-specific behaviour to any strategy."""

from incad.plugins.loss_term import LossTermPlugin

__all__ = ["LossTermPlugin"]
