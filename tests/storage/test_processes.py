"""Real processes and real signals: a control plane killed mid-task, a worker frozen past its
lease, a writer killed mid-commit, a second owner refused."""

from __future__ import annotations

import json
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
from dropwire.storage.records import Effects, TaskSpec, TransitionRequest
from dropwire.storage.store import Store
from tests.conftest import DROPWIRE, REPO, SUBPROCESS_PYTHONPATH, wait_for
from tests.storage.helpers import CYCLE, FlakyJob

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


def test_a_worker_on_another_machine_reaches_the_control_plane_over_tcp_alone(data_dir, dropwire_env, tmp_path):
    """The worker's data dir is its own (no socket, no key file, no database there): the
    control plane's TCP listener and the shared key are its only way in."""
    from tests.platform.conftest import free_port

    task_id, markers = seed_effect_task(data_dir, first_attempt_seconds=0)
    port, key = free_port(), "one-key-for-both-machines"
    control = spawn([*DROPWIRE, "control", "--tasks", "tests.storage.helpers:no_tasks"],
                    {**dropwire_env, "DROPWIRE_CONTROL_TCP_PORT": str(port), "DROPWIRE_CONTROL_AUTHKEY": key},
                    tmp_path / "control.log")
    try:
        wait_for(lambda: f"TCP 127.0.0.1:{port}" in (tmp_path / "control.log").read_text(), what="the TCP listener")
        elsewhere = tmp_path / "elsewhere"
        remote = {**dropwire_env, "DROPWIRE_DATA_DIR": str(elsewhere), "DROPWIRE_CONTROL_ADDRESS": f"127.0.0.1:{port}",
                  "DROPWIRE_QUEUE__WORKERS": "1"}
        refused = subprocess.run([*DROPWIRE, "worker", "--tasks", "tests.storage.helpers:registry"],
                                 env={**remote, "DROPWIRE_CONTROL_AUTHKEY": "a-wrong-key"}, cwd=REPO,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert [line for line in refused.stderr.splitlines() if line.strip()] == [
            f"error: the control plane on 127.0.0.1:{port} refused the key (setting control_authkey, or the data dir's "
            "control.key)"], refused.stderr
        worker = spawn([*DROPWIRE, "worker", "--tasks", "tests.storage.helpers:registry", "--name", "elsewhere"],
                       {**remote, "DROPWIRE_CONTROL_AUTHKEY": key}, tmp_path / "worker.log")
        try:
            def status() -> str | None:
                client = ControlClient.try_connect(data_dir / "control.sock", key)
                try:
                    return client.queue.task(task_id).status if client else None
                finally:
                    if client:
                        client.close()

            wait_for(lambda: status() == "succeeded", timeout=60, what="the task to succeed on the worker elsewhere")
            assert sorted(p.name for p in markers.iterdir()) == ["finished-1-elsewhere-0", "started-1-elsewhere-0"]
        finally:
            assert stop(worker) == 0
    finally:
        assert stop(control) == 0
    assert not any((elsewhere / name).exists() for name in ("control.sock", "control.key", "dropwire.duckdb"))
    assert "refused a control connection from 127.0.0.1:" in (tmp_path / "control.log").read_text()
    assert effect_count_and_attempts(data_dir, task_id) == (1, [(1, "succeeded")])


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
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SUBPROCESS_PYTHONPATH})
    try:
        assert writer.stdout.readline().strip() == "writing"
        time.sleep(1.0)
    finally:  # killed however the wait ended, so a failed check leaves no writer behind
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


def start_control_and_worker(env: dict[str, str], tmp_path: Path, worker_threads: int) -> tuple[subprocess.Popen, subprocess.Popen]:
    """A control plane with no threads of its own, and one `dropwire worker` doing its work."""
    tasks = ["--tasks", "tests.storage.helpers:registry"]
    control = spawn([*DROPWIRE, "control", *tasks], {**env, "DROPWIRE_QUEUE__WORKERS": "0"}, tmp_path / "control.log")
    worker = None
    try:
        wait_for(lambda: "control plane up" in (tmp_path / "control.log").read_text(), what="the control plane")
        worker = spawn([*DROPWIRE, "worker", *tasks, "--name", "remote"],
                       {**env, "DROPWIRE_QUEUE__WORKERS": str(worker_threads)}, tmp_path / "worker.log")
        wait_for(lambda: "worker remote up" in (tmp_path / "worker.log").read_text(), what="the worker")
    except BaseException:
        for process in (worker, control):
            if process is not None:
                stop(process, signal.SIGKILL)
        raise
    return control, worker


def test_a_remote_worker_retries_crashes_and_dead_letters_what_never_works(data_dir, dropwire_env, tmp_path, run_cli):
    with Store.open(data_dir / "dropwire.duckdb", MACHINES) as store:
        for model in ("once", "never"):
            store.states.create("model", model, triggered_by="test")
    control, worker = start_control_and_worker(dropwire_env, tmp_path, worker_threads=1)
    try:
        settings = load_settings(environ={"DROPWIRE_DATA_DIR": str(data_dir)})
        client = ControlClient(settings.control_socket_path, settings.control_key())
        gave_up = Effects(transitions=[TransitionRequest(kind="model", entity_id="never", trigger="dataset_uploaded",
                                                         triggered_by="test", reason="gave up")])
        retried = client.queue.enqueue(TaskSpec(name="flaky", args=FlakyJob("once", crash_attempts=1), max_attempts=3))
        dead = client.queue.enqueue(TaskSpec(name="flaky", args=FlakyJob("never", crash_attempts=99), max_attempts=2,
                                       on_dead=gave_up))
        wait_for(lambda: client.queue.task(retried).status == "succeeded" and client.queue.task(dead).status == "dead",
                 what="one success after a crash and one dead letter")
        once = client.queue.task(retried)
        assert [(a.attempt, a.outcome) for a in once.history] == [(1, "failed")] and once.attempts == 2
        assert client.states.current("model", "once")[0] == "QUALITY_CHECK_PENDING"
        # The dead letter's on_dead effect committed with it; the tools see it through the socket.
        assert client.states.current("model", "never")[0] == "QUALITY_CHECK_PENDING"
        listed = run_cli("dlq", "list")
        assert listed.returncode == 0 and f"{dead} " in listed.stdout and "metrics store unreachable" in listed.stdout
        shown = json.loads(run_cli("dlq", "show", str(dead)).stdout)
        assert shown["attempts"] == 2 and "ConnectionError" in shown["history"][0]["traceback"]
        client.close()
    finally:
        assert stop(worker) == 0, (tmp_path / "worker.log").read_text()
        assert stop(control) == 0, (tmp_path / "control.log").read_text()


def test_a_worker_killed_while_being_answered_is_one_log_line_not_a_traceback(data_dir, dropwire_env, tmp_path):
    control, worker = start_control_and_worker(dropwire_env, tmp_path, worker_threads=2)
    log = tmp_path / "control.log"
    try:
        # Idle worker threads sit in long-poll claims the control plane answers when they time out.
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: "went away before the answer to its queue.claim call" in log.read_text(), what="the dead peer's log line")
    finally:
        assert stop(control) == 0
    text = log.read_text()
    assert f"control peer process {worker.pid} (worker remote-" in text
    assert "Traceback" not in text and "Exception in thread" not in text
