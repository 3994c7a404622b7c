"""Check before a run prepares data or trains that every folder it will write into is writable.

Without this an unwritable output folder, a read-only file system or an MLflow
store in a missing folder is found only after the first step has trained.
Permission bits do not tell (root writes anywhere, a read-only mount refuses
everyone), so each folder is probed by creating and deleting a file in it. A
tracking server (``http(s)://``) is asked once for its front page: MLflow's
own client retries a refused connection for minutes before it says so.
"""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from incad.config import RunConfig
from incad.errors import OutputError, os_error_reason
from incad.tracking.mlflow_tracker import resolve_tracking_uri

SQLITE_PREFIX = "sqlite:///"
SERVER_PREFIXES = ("http://", "https://")
SERVER_TIMEOUT_SECONDS = 10


def require_writable(folder: Path, role: str, hint: str, create: bool) -> None:
    """Raise an :class:`OutputError` naming ``folder`` unless a file can be created in it (``create``: make it first)."""
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".incad-write-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"{folder}: the {role} cannot be written ({os_error_reason(exc)}). {hint}") from None


def require_answering_server(uri: str) -> None:
    """Raise an :class:`OutputError` naming ``uri`` unless the tracking server at ``uri`` answers (any HTTP status counts)."""
    try:
        urllib.request.urlopen(uri, timeout=SERVER_TIMEOUT_SECONDS).close()
    except urllib.error.HTTPError:
        return  # it answers (an authenticating proxy may refuse the front page)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OutputError(
            f"{uri}: the MLflow tracking server does not answer ({reason}). Start it (see README, Scaling out), "
            "fix tracking.tracking_uri (or MLFLOW_TRACKING_URI), or set tracking.enabled: false."
        ) from None


def require_writable_outputs(config: RunConfig) -> None:
    """The run's output folder (created if needed), its checkpoint folder and, with tracking on, the sqlite store's folder or the tracking server."""
    run_folder = config.output_dir / config.name
    hint = "Set output_dir to a writable folder (or fix its permissions) and run again."
    require_writable(run_folder, "run's output folder", hint, create=True)
    checkpoints = run_folder / "checkpoints"
    if checkpoints.exists():
        require_writable(checkpoints, "checkpoint folder", hint, create=False)
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    if config.tracking.enabled and uri.startswith(SQLITE_PREFIX):
        store_folder = Path(uri.removeprefix(SQLITE_PREFIX)).parent
        hint = "Point tracking.tracking_uri (or MLFLOW_TRACKING_URI) at a sqlite file in a writable folder, or set tracking.enabled: false."
        require_writable(store_folder, "folder of the MLflow store", hint, create=False)
    if config.tracking.enabled and uri.startswith(SERVER_PREFIXES):
        require_answering_server(uri)
