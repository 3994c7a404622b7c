"""The backbone registry and its factory, side by side (timm's ``register_model`` + ``create_model``).

A backbone family registers where its factory is defined, under the names of
its variants (``@register_backbone("efficientnet-lite0", ...)``); the factory
receives the variant's name. Importing :mod:`incad.models.backbones` imports
every built-in family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from incad.registry import Registry

if TYPE_CHECKING:
    from incad.models.backbones.efficientnet import MultiScaleFeatures

BACKBONES: Registry[Callable[..., "MultiScaleFeatures"]] = Registry("backbone")
register_backbone = BACKBONES.register


def create_backbone(name: str, weights: str = "imagenet", taps: Sequence[int] | None = None) -> "MultiScaleFeatures":
    """The registered backbone ``name``.

    ``weights``: "imagenet", "random" (with a warning), or the path of a state
    dict of ``efficientnet_pytorch``'s EfficientNet (the classifier may be absent).
    ``taps``: block indices; default: the last block at strides 4, 8 and 16.
    """
    return BACKBONES.get(name)(name, weights=weights, taps=taps)
