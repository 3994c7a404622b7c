"""Name -> factory registries, so configuration files can name components.

Each kind of component keeps its registry and factory side by side, as timm's
``register_model`` and ``create_model`` do: :mod:`incad.learners.registry`,
:mod:`incad.strategies.registry`, :mod:`incad.models.backbones.registry` and
:mod:`incad.data.readers.registry`. Components register where they are
defined, with the registry's ``register`` decorator. A misspelt name in a
config must fail with the list of valid names, not with a ``KeyError`` deep
inside a run, and a component's options are checked against the schema it
declares (``Options``) once, when the run is resolved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from incad.errors import ConfigError, format_validation_error

Factory = TypeVar("Factory", bound=Callable[..., Any])


@dataclass(frozen=True)
class Choice(Generic[Factory]):
    """A registered component picked by a config section: its name, factory and validated options."""

    name: str
    factory: Factory
    options: BaseModel


class Registry(Generic[Factory]):
    """Factories of one kind of component (``kind`` appears in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Factory] = {}

    def register(self, *names: str) -> Callable[[Factory], Factory]:
        """Decorator that files ``factory`` under each of ``names`` (a family of variants); a second use of a name is a bug."""

        def add(factory: Factory) -> Factory:
            for name in names:
                if name in self._factories:
                    raise ValueError(f"{self.kind} {name!r} is already registered")
                self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> Factory:
        """The factory filed under ``name``; an unknown name lists the allowed ones."""
        try:
            return self._factories[name]
        except KeyError:
            allowed = ", ".join(self.names()) or "(none registered)"
            raise ConfigError(f"unknown {self.kind} {name!r}; allowed: {allowed}") from None

    def choose(self, section: str, name: str, options: dict[str, Any], source: str) -> Choice[Factory]:
        """The factory ``name`` with ``options`` validated by its ``Options`` schema; errors name ``<section>.<key>``."""
        try:
            factory = self.get(name)
        except ConfigError as exc:
            raise ConfigError(f"{source}: '{section}.name': {exc}") from None
        try:
            validated = factory.Options.model_validate(options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, factory.Options, prefix=section)) from None
        return Choice(name, factory, validated)

    def names(self) -> list[str]:
        """Registered names, sorted, for messages and CLI help."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
