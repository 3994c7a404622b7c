"""Frozen feature extractors; importing this package registers the built-in ones (see :mod:`incad.models.backbones.registry`)."""

from incad.models.backbones.efficientnet import MultiScaleFeatures
from incad.models.backbones.registry import BACKBONES, create_backbone, register_backbone

__all__ = ["BACKBONES", "MultiScaleFeatures", "create_backbone", "register_backbone"]
