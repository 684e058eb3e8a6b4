"""The one way a process opens an MLflow tracking store: mlflow imported on first use (it
takes seconds), and a new SQLite store migrated by one process at a time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import fcntl
except ImportError:  # Windows: no lock; the store is migrated by whichever opens it first
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient on `tracking_uri`, imported and (for a new SQLite store) migrated on
    first use, not at start: MLflow migrates a new SQLite database when it is first opened,
    and two processes doing that at once break it, so the first opening in each process is
    serialised by a lock file beside the database."""
    from mlflow.tracking import MlflowClient

    path = _sqlite_path(tracking_uri)
    if path is not None and tracking_uri not in _prepared:
        with _prepared_lock:
            if tracking_uri not in _prepared:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(f"{path}.lock", "a") as lock:
                    if fcntl is not None:
                        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                    MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
                _prepared.add(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` tracking URI (None for any other store)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
