"""A run resolved once: its config with every name looked up and every option validated.

``load_run`` reads a scenario YAML (schema: :mod:`incad.config`) and resolves
the learner and strategy it names against their registries, validating their
options with the schemas they declare; the runner adds the prepared data
(:meth:`ResolvedRun.with_data`). This one object then flows runner ->
scenario -> learner and strategy factories; nothing downstream looks a name
up again or re-reads the dataset's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from incad.config import RunConfig, load_config, validate_config
from incad.data.datasets import PreparedDataset
from incad.learners import LEARNERS, Learner
from incad.registry import Choice
from incad.strategies import STRATEGIES, Strategy


@dataclass(frozen=True)
class ResolvedRun:
    """The config, the learner and strategy it picks (classes with validated options), and, once prepared, its data."""

    config: RunConfig
    learner: Choice[type[Learner]]
    strategy: Choice[type[Strategy]]
    data: PreparedDataset | None = None

    def with_data(self, data: PreparedDataset) -> ResolvedRun:
        return replace(self, data=data)


def resolve(config: RunConfig, source: str = "<config>") -> ResolvedRun:
    """Look up the learner and strategy ``config`` names and validate their options; errors name the key."""
    learner = LEARNERS.choose("learner", config.learner.name, config.learner_options(), source)
    strategy = STRATEGIES.choose("strategy", config.strategy.name, config.strategy_options(), source)
    return ResolvedRun(config, learner, strategy)


def load_run(path: str | Path, overrides: list[str] | None = None, strategy_file: str | Path | None = None) -> ResolvedRun:
    """Load, override, validate and resolve a scenario YAML (see :func:`incad.config.load_config`)."""
    return resolve(load_config(path, overrides, strategy_file), source=str(path))


def resolve_raw(raw: dict[str, Any], source: str = "<config>") -> ResolvedRun:
    """Validate and resolve a raw mapping (a logged ``config.json``, a test's dict)."""
    return resolve(validate_config(raw, source), source)
