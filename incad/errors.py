"""Errors that tell the user what is wrong and what to do.

Every message names the file or configuration key at fault, so a user can fix
the input without reading a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path


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
