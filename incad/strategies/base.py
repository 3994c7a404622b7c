"""What a registered strategy declares: its options, its plugins and, rarely, its own scenario.

Most strategies are a set of Avalanche plugins on the shared template.
``joint`` also changes what the steps are (one step with every class), which
:meth:`Strategy.adapt_scenario` expresses; everything else keeps the scenario.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from avalanche.core import SupervisedPlugin
from pydantic import BaseModel, ConfigDict

from incad.learners.base import Learner

if TYPE_CHECKING:
    from incad.scenario import Scenario


class StrategyOptions(BaseModel):
    """Base of strategy option schemas: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Strategy:
    """A strategy with no plugins that trains on the scenario as it is (subclasses override)."""

    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    plugin: ClassVar[type[SupervisedPlugin] | None] = None

    @classmethod
    def plugins(cls, options: StrategyOptions, learner: Learner) -> list[SupervisedPlugin]:
        """The plugins this strategy adds for ``learner``; a learner it cannot serve is a ConfigError.

        By default: its one ``plugin`` class built with the options as keyword arguments, or none.
        """
        return [] if cls.plugin is None else [cls.plugin(**options.model_dump())]

    @classmethod
    def adapt_scenario(cls, scenario: "Scenario") -> "Scenario":
        """The steps this strategy trains and evaluates on; the scenario's own by default."""
        return scenario
