"""Fixtures shared by the whole suite: a data directory per test, the environment a
`dropwire` subprocess needs to use it, and a way to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


# --- The fast tier (`make test-fast`): unit and property tests, no subprocess or server. ---
# Tests that use these fixtures start a server or a `dropwire` subprocess: slow, wherever they are.
SERVER_FIXTURES = frozenset({"run_cli", "start_emulator", "start_batches", "upstream", "label_studio", "runtime",
                             "client", "gateway", "lanes_runtime", "remote"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true",
                     help="the fast tier: only tests not marked slow, and any of them that starts a process or a "
                          "server fails, saying to mark it slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if not config.getoption("--fast"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.getoption("--fast"):
        _refuse_processes_and_servers()


def _refuse_processes_and_servers() -> None:
    """In the fast tier, starting a process or listening on a socket fails the test at once (a
    BaseException, so no `except Exception` in the code under test hides it): a server test
    cannot slip into the tier unnoticed."""
    import multiprocessing.process
    import socket

    def refuse(what: str) -> Callable[..., None]:
        def refused(*args: object, **kwargs: object) -> None:
            pytest.fail(f"the fast tier (make test-fast) runs no {what}: mark this test `@pytest.mark.slow` "
                        f"(or its module: `pytestmark = pytest.mark.slow`)", pytrace=True)
        return refused

    popen = subprocess.Popen.__init__

    def python_refused(self: subprocess.Popen, args: object, *rest: object, **kwargs: object) -> None:
        # A Python subprocess is a dropwire command or a server; a system tool (uname) is not.
        first = str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]
        if first == sys.executable or "python" in Path(first).name or "dropwire" in first or "label-studio" in first:
            refuse(f"Python subprocess ({first})")()
        popen(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = python_refused  # type: ignore[method-assign]
    multiprocessing.process.BaseProcess.start = refuse("child process")  # type: ignore[method-assign]
    socket.socket.listen = refuse("server (a listening socket)")  # type: ignore[method-assign]
