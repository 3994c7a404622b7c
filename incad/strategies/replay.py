"""``strategy: replay``: rehearse a memory of earlier steps' normal samples with every batch."""

from __future__ import annotations

from pydantic import Field, model_validator

from incad.learners.base import Learner
from incad.plugins.rehearsal import IndexedBalancedBuffer, ReplayBufferPlugin
from incad.strategies.base import Strategy, StrategyOptions
from incad.strategies.registry import register_strategy

DEFAULT_BUFFER_SIZE = 64


class ReplayOptions(StrategyOptions):
    """Memory size as ``buffer_size`` samples in all (balanced over steps) or ``per_class`` samples per class."""

    buffer_size: int | None = Field(None, ge=1)
    per_class: int | None = Field(None, ge=1)
    batch_size_mem: int | None = Field(None, ge=1, description="replayed samples per batch; default: training.batch_size")

    @model_validator(mode="after")
    def _one_size(self) -> "ReplayOptions":
        if self.buffer_size is not None and self.per_class is not None:
            raise ValueError("set either strategy.buffer_size (samples in all) or strategy.per_class (samples per class), not both")
        if self.per_class is None and self.buffer_size is None:
            self.buffer_size = DEFAULT_BUFFER_SIZE
        return self


@register_strategy("replay")
class Replay(Strategy):
    """Avalanche's replay of a random memory of normal training samples."""

    Options = ReplayOptions

    @classmethod
    def plugins(cls, options: ReplayOptions, learner: Learner) -> list[ReplayBufferPlugin]:
        buffer = IndexedBalancedBuffer(max_size=options.buffer_size, per_class=options.per_class)
        return [ReplayBufferPlugin(buffer, batch_size_mem=options.batch_size_mem)]
