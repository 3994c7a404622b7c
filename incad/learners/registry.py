"""The learner registry and its factory, side by side (timm's ``register_model`` + ``create_model``).

A learner registers where its class is defined::

    @register_learner("patchcore")
    class PatchCoreLearner(Learner): ...

and importing :mod:`incad.learners` imports every built-in learner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from incad.learners.base import Learner
from incad.registry import Registry

if TYPE_CHECKING:
    from incad.resolve import ResolvedRun

LEARNERS: Registry[type[Learner]] = Registry("learner")
register_learner = LEARNERS.register


def create_learner(run: "ResolvedRun", class_names: Sequence[str]) -> Learner:
    """The run's learner, built from its validated options for the scenario's modality, class order and image size."""
    return run.learner.factory(
        run.learner.options,
        modality=run.config.scenario.modality,
        class_names=tuple(class_names),
        image_size=run.config.dataset.image_size,
    )
