"""The strategy registry and its factory, side by side (timm's ``register_model`` + ``create_model``).

A strategy registers where its class is defined (``@register_strategy("replay")``);
importing :mod:`incad.strategies` imports every built-in strategy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from avalanche.core import BasePlugin
from avalanche.training.plugins import EvaluationPlugin

from incad.distributed import world_size
from incad.learners.base import Learner
from incad.registry import Registry
from incad.strategies.base import Strategy
from incad.strategies.template import AnomalyDetectionTemplate

if TYPE_CHECKING:
    from incad.resolve import ResolvedRun

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
register_strategy = STRATEGIES.register


def create_strategy(
    run: "ResolvedRun",
    learner: Learner,
    extra_plugins: Sequence[BasePlugin],
    device: torch.device,
    evaluator: EvaluationPlugin | None = None,
) -> AnomalyDetectionTemplate:
    """The anomaly-detection template training ``learner`` with the run's strategy plugins, then ``extra_plugins``."""
    training = run.config.training
    trainable = [p for p in learner.parameters() if p.requires_grad]
    # One explicit group, so a learner with nothing to train (PatchCore) still gets an optimizer for Avalanche.
    optimizer = torch.optim.AdamW([{"params": trainable}], lr=training.lr, weight_decay=training.weight_decay)
    return AnomalyDetectionTemplate(
        learner=learner,
        optimizer=optimizer,
        train_epochs=training.epochs,
        train_mb_size=training.batch_size // world_size(),  # the global batch, split over torchrun's processes
        shuffle=training.shuffle,
        eval_mb_size=run.config.evaluation.batch_size,
        device=device,
        plugins=[*run.strategy.factory.plugins(run.strategy.options, learner), *extra_plugins],
        grad_clip=training.grad_clip,
        num_workers=training.num_workers,
        evaluator=evaluator,
    )
