"""Avalanche plugins that add method-specific behaviour to any strategy; :mod:`incad.plugins.contract` is what they may read from it."""
