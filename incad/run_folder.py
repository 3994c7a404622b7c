"""The output folder of one run (``outputs/<name>``): a lock for the whole run and a manifest of its checkpoints.

Lock: ``run.lock``, held with ``fcntl.flock`` from the start of the run to
its end, ``--resume`` included, and holding the pid, host and start time of
its holder. A second run of the same folder refuses with that holder in the
message. The operating system drops the lock when its process ends, however
it ends (``kill -9`` included), so a lock never goes stale; the file itself
is never removed (removing it while another process waits on it would let
two processes each hold "the" lock). ``force`` runs without the lock when it
is held or the file system cannot lock: only for when the user knows better
(a hung process on a network mount), since two runs in one folder mix their
checkpoints.

Manifest: ``run_manifest.json`` lists the step folders the run may have
written under ``checkpoints/``, recorded before each is written. A fresh run
deletes exactly those, so nothing a user put there is removed; a folder
there named like a checkpoint that the manifest does not list stops the run,
because ``--resume`` would otherwise take it for one of this run's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from incad.errors import ConfigError
from incad.paths import path_within

LOCK_FILE = "run.lock"
MANIFEST_FILE = "run_manifest.json"
CHECKPOINTS = "checkpoints"
# What the checkpoint writer creates in checkpoints/ (incad.checkpoint): step_<k> and its staging folder.
CHECKPOINT_ENTRY = re.compile(r"^step_\d+(\.partial)?$")


def _holder_text(handle) -> str:
    """Who holds the lock, as its holder wrote it; waits briefly for a holder that has just taken it."""
    for _ in range(20):
        handle.seek(0)
        try:
            holder = json.loads(handle.read())
            return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process that did not record itself"


@contextmanager
def locked_run_folder(folder: Path, force: bool = False) -> Iterator[None]:
    """Hold ``folder/run.lock`` for the duration of the ``with`` block (see the module docstring)."""
    lock_path = path_within(folder, LOCK_FILE)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise ConfigError(f"{lock_path}: cannot create the run's lock file ({exc.strerror}); set output_dir to a folder you can write to") from None
    with handle:
        problem = None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(handle)
            if not force:
                raise ConfigError(
                    f"{folder} is in use by another incad run ({holder}); wait for it to end, "
                    f"give this run another name (--set name=...), or pass --force if you are sure that process no longer writes there"
                ) from None
            problem = f"which {holder} holds"
        except OSError as exc:
            if not force:
                raise ConfigError(
                    f"{lock_path}: cannot lock the run folder ({exc.strerror}); use a local folder as output_dir, or pass --force to run without the lock"
                ) from None
            problem = f"which cannot be locked here ({exc.strerror})"
        if problem:
            logging.getLogger("incad").warning("--force: running in %s without its lock %s, %s", folder, LOCK_FILE, problem)
        else:
            handle.seek(0)
            handle.truncate()
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
            handle.flush()
        yield  # closing the file releases the lock


class CheckpointManifest:
    """The checkpoint folders a run of this output folder wrote (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.path = path_within(folder, MANIFEST_FILE)
        self.checkpoints = path_within(folder, CHECKPOINTS)

    def entries(self) -> list[str]:
        if not self.path.is_file():
            return []
        return list(json.loads(self.path.read_text())["checkpoints"])

    def _write(self, entries: list[str]) -> None:
        staging = self.path.with_name(self.path.name + ".partial")
        staging.write_text(json.dumps({"checkpoints": entries}, indent=2))
        staging.replace(self.path)

    def record(self, step: int) -> None:
        """List step ``step``'s folders before they are written, so a kill mid-write leaves nothing unlisted."""
        entries = self.entries()
        self._write(entries + [name for name in (f"step_{step}", f"step_{step}.partial") if name not in entries])

    def refuse_foreign(self) -> None:
        """ConfigError when ``checkpoints/`` holds a checkpoint-named entry this folder's runs did not write."""
        if not self.checkpoints.is_dir():
            return
        listed = set(self.entries())
        foreign = sorted(entry.name for entry in self.checkpoints.iterdir() if CHECKPOINT_ENTRY.match(entry.name) and entry.name not in listed)
        if foreign:
            raise ConfigError(
                f"{self.checkpoints} holds {', '.join(foreign)} that no run of this folder wrote ({MANIFEST_FILE} does not list "
                f"{'it' if len(foreign) == 1 else 'them'}); incad deletes and resumes only its own checkpoints: "
                f"move {'it' if len(foreign) == 1 else 'them'} away or give this run another name (--set name=...)"
            )

    def clear(self) -> None:
        """Delete the listed checkpoint folders (a fresh run); everything else in ``checkpoints/`` stays."""
        self.refuse_foreign()
        for name in self.entries():
            if not CHECKPOINT_ENTRY.match(name):  # a hand-edited manifest names nothing outside checkpoints/
                continue
            path = self.checkpoints / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.is_symlink() or path.exists():
                path.unlink()
        self._write([])
