"""Frozen feature extractors; importing this package registers them in ``BACKBONES``."""

from incad.models.backbones.efficientnet import MultiScaleFeatures, build_backbone

__all__ = ["MultiScaleFeatures", "build_backbone"]
