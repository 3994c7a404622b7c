"""``strategy: joint``: every class of the scenario at once, one step: the upper bound of continual learning."""

from __future__ import annotations

from avalanche.benchmarks import benchmark_from_datasets
from avalanche.benchmarks.utils import concat_datasets

from incad.scenario import Scenario
from incad.strategies.base import Strategy
from incad.strategies.registry import register_strategy


@register_strategy("joint")
class Joint(Strategy):
    """One training experience with the training data of every step, evaluated on every class."""

    @classmethod
    def adapt_scenario(cls, scenario: Scenario) -> Scenario:
        benchmark = scenario.benchmark
        merged = benchmark_from_datasets(
            train=[concat_datasets([experience.dataset for experience in benchmark.train_stream])],
            test=[concat_datasets([experience.dataset for experience in benchmark.test_stream])],
        )
        return Scenario(merged, scenario.class_order, [list(scenario.class_order)])
