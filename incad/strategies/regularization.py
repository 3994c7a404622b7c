"""``strategy: ewc | mas | si | lwf``: regularisation towards what the previous steps learned.

Defaults are starting points, not tuned values: the penalties' scale depends
on the learner's loss scale (see ``incad compare`` to compare settings).
"""

from __future__ import annotations

from pydantic import Field

from incad.plugins.distillation import ReconstructionDistillationPlugin
from incad.plugins.importance import EWCPlugin, MASPlugin, SynapticIntelligence
from incad.strategies.base import Strategy, StrategyOptions
from incad.strategies.registry import register_strategy


class EWCOptions(StrategyOptions):
    weight: float = Field(1000.0, ge=0, description="lambda of the quadratic penalty")
    decay: float = Field(1.0, ge=0, le=1, description="online EWC: importance = decay * previous + current")


class MASOptions(StrategyOptions):
    weight: float = Field(1.0, ge=0, description="lambda of the quadratic penalty")
    alpha: float = Field(0.5, ge=0, le=1, description="importance = alpha * previous + (1 - alpha) * current")


class SIOptions(StrategyOptions):
    weight: float = Field(100.0, ge=0, description="lambda of the quadratic penalty")
    damping: float = Field(1e-3, gt=0, description="xi in importance = path / (change^2 + xi)")


class LwFOptions(StrategyOptions):
    weight: float = Field(1.0, ge=0, description="weight of the reconstruction distillation term")


@register_strategy("ewc")
class EWC(Strategy):
    """Elastic weight consolidation with the learner's own loss as the likelihood."""

    Options = EWCOptions
    plugin = EWCPlugin


@register_strategy("mas")
class MAS(Strategy):
    """Memory-aware synapses: importance from the sensitivity of the learner's outputs."""

    Options = MASOptions
    plugin = MASPlugin


@register_strategy("si")
class SI(Strategy):
    """Synaptic intelligence: importance from the path integral of the learner's own loss."""

    Options = SIOptions
    plugin = SynapticIntelligence


@register_strategy("lwf")
class LwF(Strategy):
    """Learning without forgetting as distillation of the previous model's reconstructions (and other trainable outputs)."""

    Options = LwFOptions
    plugin = ReconstructionDistillationPlugin
