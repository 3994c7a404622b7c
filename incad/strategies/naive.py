"""``strategy: naive``: plain fine-tuning on each step's data, the lower bound of forgetting."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin
from pydantic import BaseModel, ConfigDict

from incad.registry import STRATEGIES


class NaiveOptions(BaseModel):
    """Naive fine-tuning has no options."""

    model_config = ConfigDict(extra="forbid")


@STRATEGIES.register("naive")
class Naive:
    """No plugin: the template alone fine-tunes the learner step after step."""

    Options = NaiveOptions

    @staticmethod
    def plugins(options: NaiveOptions) -> list[SupervisedPlugin]:
        return []
