"""Real processes and real signals: a control plane killed mid-task, a worker frozen past its
lease, a writer killed mid-commit, a second owner refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dropwire.functions.evaluation.states import MACHINES
from dropwire.local_emulator.control import ControlClient
from dropwire.local_emulator.settings import load_settings
from dropwire.storage import consistency
from dropwire.storage.database import connect
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store
from tests.conftest import DROPWIRE, REPO, wait_for
from tests.storage.helpers import CYCLE

pytestmark = pytest.mark.slow


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout=30)


def seed_effect_task(data_dir: Path, first_attempt_seconds: float) -> tuple[int, Path]:
    markers = data_dir / "markers"
    markers.mkdir()
    with Store.open(data_dir / "dropwire.duckdb", MACHINES) as store:
        store.states.create("model", "m1", triggered_by="test")
        task_id = store.queue.enqueue(TaskSpec(name="effect_once", args={
            "model_id": "m1", "marker_dir": str(markers), "first_attempt_seconds": first_attempt_seconds}))
    return task_id, markers


def effect_count_and_attempts(data_dir: Path, task_id: int) -> tuple[int, list[tuple[int, str]]]:
    with Store.open(data_dir / "dropwire.duckdb", MACHINES) as store:
        effects = store.query("SELECT count(*) FROM state_history WHERE entity_id = 'm1' AND \"trigger\" = 'dataset_uploaded'")[0][0]
        task = store.queue.task(task_id)
        attempts = [(a.attempt, a.outcome) for a in task.history] + [(task.attempts, task.status)]
        assert consistency.check(store.writer.cursor(), MACHINES) == []
    return effects, attempts


def task_status(data_dir: Path, env: dict[str, str], task_id: int) -> str | None:
    settings = load_settings(environ={"DROPWIRE_DATA_DIR": str(data_dir)})
    client = ControlClient.try_connect(settings.control_socket_path, settings.control_key())
    if client is None:
        return None
    try:
        return client.queue.task(task_id).status
    finally:
        client.close()


def test_kill_9_mid_task_then_restart_completes_exactly_once(data_dir, dropwire_env, tmp_path):
    task_id, markers = seed_effect_task(data_dir, first_attempt_seconds=30)
    env = {**dropwire_env, "DROPWIRE_QUEUE__WORKERS": "1"}
    control = [*DROPWIRE, "control", "--tasks", "tests.storage.helpers:registry"]
    first = spawn(control, env, tmp_path / "first.log")
    wait_for(lambda: list(markers.glob("started-1-*")), what="attempt 1 to start")
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL

    second = spawn(control, env, tmp_path / "second.log")
    try:
        wait_for(lambda: task_status(data_dir, env, task_id) == "succeeded", timeout=60, what="the rerun to succeed")
    finally:
        assert stop(second) == 0, (tmp_path / "second.log").read_text()
    effects, attempts = effect_count_and_attempts(data_dir, task_id)
    assert effects == 1
    assert attempts == [(1, "lease_expired"), (2, "succeeded")]
    assert not list(markers.glob("finished-1-*"))


def test_a_worker_frozen_past_its_lease_has_its_late_completion_rejected(data_dir, dropwire_env, tmp_path):
    task_id, markers = seed_effect_task(data_dir, first_attempt_seconds=4)
    control = spawn([*DROPWIRE, "control", "--tasks", "tests.storage.helpers:no_tasks"], dropwire_env, tmp_path / "control.log")
    workers: list[subprocess.Popen] = []
    try:
        wait_for(lambda: (data_dir / "control.sock").exists(), what="the control socket")
        worker = [*DROPWIRE, "worker", "--tasks", "tests.storage.helpers:registry"]
        env = {**dropwire_env, "DROPWIRE_QUEUE__WORKERS": "1"}
        frozen = spawn([*worker, "--name", "frozen"], env, tmp_path / "frozen.log")
        workers.append(frozen)
        wait_for(lambda: list(markers.glob("started-1-frozen*")), what="the first worker to start the task")
        frozen.send_signal(signal.SIGSTOP)
        workers.append(spawn([*worker, "--name", "healthy"], env, tmp_path / "healthy.log"))
        wait_for(lambda: task_status(data_dir, env, task_id) == "succeeded", timeout=60, what="the healthy worker to finish")
        frozen.send_signal(signal.SIGCONT)
        wait_for(lambda: list(markers.glob("finished-1-frozen*")), what="the frozen worker to wake and finish")
        wait_for(lambda: "lease was lost" in (tmp_path / "frozen.log").read_text(), what="the stale completion to be refused")
    finally:
        for process in workers:
            process.send_signal(signal.SIGCONT)
            stop(process)
        assert stop(control) == 0, (tmp_path / "control.log").read_text()
    effects, attempts = effect_count_and_attempts(data_dir, task_id)
    assert effects == 1
    assert attempts == [(1, "lease_expired"), (2, "succeeded")]


def test_a_hard_kill_during_writes_leaves_a_consistent_database(tmp_path):
    path = tmp_path / "crash.duckdb"
    writer = subprocess.Popen([sys.executable, "-m", "tests.storage.write_forever", str(path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert writer.stdout.readline().strip() == "writing"
    time.sleep(1.0)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    with connect(path) as con:
        written = con.execute("SELECT count(*) FROM state_history").fetchone()[0]
        assert written > 0
    with Store.open(path, [*MACHINES, CYCLE]) as store:
        assert consistency.check(store.writer.cursor(), [*MACHINES, CYCLE]) == []
        store.states.create("cycle", "after-crash", triggered_by="test")


def test_a_second_owner_is_told_who_holds_the_database(data_dir, run_cli):
    with Store.open(data_dir / "dropwire.duckdb", MACHINES):
        result = run_cli("db", "upgrade")
    assert result.returncode == 1
    assert f"is in use by process {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr
