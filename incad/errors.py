"""Errors that tell the user what is wrong and what to do.

Every message names the file or configuration key at fault, so a user can fix
the input without reading a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


class IncadError(Exception):
    """Base class of all errors incad raises on purpose."""


class ConfigError(IncadError):
    """A configuration file or value is invalid."""


class DataError(IncadError):
    """A dataset file or folder is missing, corrupt or inconsistent.

    ``path`` is the offending file or folder, ``problem`` what is wrong with it
    and ``hint`` what the user can do about it.
    """

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message += f" {hint}"
        super().__init__(message)


class OutputError(IncadError):
    """An output folder or file (results, checkpoints, the MLflow store) cannot be written."""


def os_error_reason(error: OSError) -> str:
    """The cause of a failed file operation in a few words, e.g. "no space left on device"."""
    return os.strerror(error.errno).lower() if error.errno else str(error)


def format_validation_error(error: ValidationError, source: str, model: type[BaseModel], prefix: str = "") -> str:
    """pydantic's errors as one line per key, each naming the key (under ``prefix``, e.g. ``learner``) and what to do."""
    lines = [f"{source}: invalid configuration."]
    for item in error.errors():
        local_key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        key = f"{prefix}.{local_key}" if prefix and item["loc"] else local_key
        if item["type"] == "extra_forbidden":
            allowed = allowed_keys(model, item["loc"][:-1])
            hint = f" Allowed keys here: {', '.join(allowed)}." if allowed else ""
            lines.append(f"  - unknown key '{key}'.{hint}")
        elif item["type"] == "missing":
            lines.append(f"  - missing key '{key}'.")
        else:
            message = item["msg"].removeprefix("Value error, ")
            label = "" if message.startswith(local_key) or not item["loc"] else f"'{key}': "
            given = item.get("input")
            # a whole section as "got" says nothing the message does not
            lines.append(f"  - {label}{message}" + ("." if isinstance(given, dict) else f" (got {given!r})."))
    lines.append("Fix the key(s) above and run again.")
    return "\n".join(lines)


def allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model that ``loc`` points into."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))
