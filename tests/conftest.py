"""Fixtures shared by the whole suite: a data directory per test, the environment a
`dropwire` subprocess needs to use it, and a way to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import settings as hypothesis_settings

# No per-example deadline anywhere: on a loaded 2-core box a slow example is not a failure
# (a deadline is a timed assertion). Examples still have to pass.
hypothesis_settings.register_profile("dropwire", deadline=None)
hypothesis_settings.load_profile("dropwire")

REPO = Path(__file__).resolve().parent.parent
DROPWIRE = [sys.executable, "-m", "dropwire.local_emulator"]
# A dropwire subprocess imports this tree, after whatever the caller's path put first: `make
# mutate` names the modules of its mutated copy there, which the subprocess must run, not the
# installed (editable) tree.
SUBPROCESS_PYTHONPATH = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", ""), str(REPO)]))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def dropwire_env(data_dir: Path) -> dict[str, str]:
    """Environment for a dropwire subprocess: its own data dir, fast leases, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWIRE_")}
    env.update(
        DROPWIRE_DATA_DIR=str(data_dir),
        DROPWIRE_QUEUE__LEASE_SECONDS="2",
        DROPWIRE_QUEUE__HEARTBEAT_SECONDS="0.4",
        DROPWIRE_QUEUE__BACKOFF_BASE_SECONDS="0.2",
        DROPWIRE_QUEUE__BACKOFF_MAX_SECONDS="1",
        PYTHONPATH=SUBPROCESS_PYTHONPATH,
        COLUMNS="200",  # rich wraps tables to the terminal; keep words whole for assertions
    )
    return env


@pytest.fixture
def run_cli(dropwire_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*DROPWIRE, *args], env=env or dropwire_env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    return run


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
             what: str | Callable[[], str] = "condition") -> object:
    """Poll until `condition()` is truthy; fail the test with `what` if it never is (a callable
    `what` is asked at the failure, so it tells how things stand then, not when the wait began)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")


def unfinished_tasks(query: Callable[..., list]) -> str:
    """The queue's tasks that have not succeeded, for a failed wait's message: what is queued,
    running, retrying or dead, with its last error."""
    rows = query("SELECT id, name, status, attempts, left(coalesce(last_error, ''), 300) FROM tasks "
                 "WHERE status <> 'succeeded' ORDER BY id")
    return "; ".join(f"#{i} {name} {status} after {attempts} attempt(s) {error}".rstrip() for i, name, status, attempts, error
                     in rows) or "none"
