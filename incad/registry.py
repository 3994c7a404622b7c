"""Name -> factory registries, so configuration files can name components.

A misspelt name in a config must fail with the list of valid names, not with a
``KeyError`` deep inside a run; that is the one thing :class:`Registry` adds to
a dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from incad.errors import ConfigError

Factory = TypeVar("Factory", bound=Callable[..., Any])


class Registry(Generic[Factory]):
    """Factories of one kind of component (``kind`` appears in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Factory] = {}

    def register(self, name: str) -> Callable[[Factory], Factory]:
        """Decorator that files ``factory`` under ``name``; a second use of a name is a bug."""

        def add(factory: Factory) -> Factory:
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

    def names(self) -> list[str]:
        """Registered names, sorted, for messages and CLI help."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


BACKBONES: Registry[Callable[..., Any]] = Registry("backbone")
LEARNERS: Registry[Callable[..., Any]] = Registry("learner")
STRATEGIES: Registry[Callable[..., Any]] = Registry("strategy")
