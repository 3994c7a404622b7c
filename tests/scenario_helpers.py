"""A scenario from a raw config, built the way a run builds it: from the data its dataset section prepares."""

from __future__ import annotations

from incad.config import validate_config
from incad.data.datasets import prepare_dataset
from incad.scenario import Scenario, build_scenario, scenario_classes


def scenario_of(raw: dict) -> Scenario:
    """The scenario of ``raw`` (validated), read through :func:`prepare_dataset` as :func:`incad.runner.prepare_data` does."""
    config = validate_config(raw)
    return build_scenario(config, prepare_dataset(config.dataset, scenario_classes(config)))
