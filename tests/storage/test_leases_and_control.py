"""The lease rules that matter when processes die or restart, and the control plane's key:
real DuckDB files, a real Unix socket and TCP on loopback, real worker processes killed with
SIGKILL."""

from __future__ import annotations

import signal
import time

import pytest

from dropwire.functions.evaluation.states import MACHINES
from dropwire.functions.kit.errors import StaleLease
from dropwire.local_emulator.control import ControlClient, ControlServer, ControlUnavailable
from dropwire.storage.records import Effects, TaskSpec, TransitionRequest
from dropwire.storage.settings import QueueSettings
from dropwire.storage.store import Store
from tests.conftest import DROPWIRE, wait_for
from tests.storage.test_processes import effect_count_and_attempts, spawn, stop, task_status


def test_after_a_restart_a_running_task_gets_one_full_lease_before_it_runs_again(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path, MACHINES) as store:
        task_id = store.queue.enqueue(TaskSpec(name="long"))
        (claimed,) = store.queue.claim("w1", lease_seconds=0.3)
    # Down for longer than that lease: its worker's heartbeats were in memory and are gone.
    wait_for(lambda: time.time() > claimed.lease_expires + 0.05, what="the original lease to run out")
    with Store.open(path, MACHINES, settings=QueueSettings(lease_seconds=60, reap_interval_seconds=0.05)) as store:
        # Within the new full lease the task is not handed to anyone else, even after reaps...
        assert store.queue.claim("w2", wait_seconds=0.3) == []
        assert store.queue.task(task_id).status == "running"
        # ...and its worker, reporting in, keeps it and completes it with its old token.
        assert store.queue.heartbeat([(task_id, claimed.token)]) == []
        store.queue.complete(task_id, claimed.token, result="done")
        assert (store.queue.task(task_id).status, store.queue.task(task_id).attempts) == ("succeeded", 1)


def test_a_task_whose_worker_never_reports_after_a_restart_runs_again_after_that_lease(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path, MACHINES) as store:
        task_id = store.queue.enqueue(TaskSpec(name="long"))
        (claimed,) = store.queue.claim("w1", lease_seconds=0.2)
    with Store.open(path, MACHINES, settings=QueueSettings(lease_seconds=0.3, heartbeat_seconds=0.1, reap_interval_seconds=0.05)) as store:
        (again,) = store.queue.claim("w2", wait_seconds=10)  # once the one lease of grace (0.3 s) is over
        assert (again.id, again.attempt) == (task_id, 2)
        with pytest.raises(StaleLease):
            store.queue.complete(task_id, claimed.token)
        assert [(a.attempt, a.outcome) for a in store.queue.task(task_id).history] == [(1, "lease_expired")]


def test_a_heartbeat_extends_the_lease_past_its_first_end(tmp_path):
    with Store.open(tmp_path / "db.duckdb", MACHINES, settings=QueueSettings(reap_interval_seconds=0.05)) as store:
        task_id = store.queue.enqueue(TaskSpec(name="long"))
        (claimed,) = store.queue.claim("w1", lease_seconds=0.3)
        assert store.queue.heartbeat([(task_id, claimed.token)], lease_seconds=60) == []
        wait_for(lambda: time.time() > claimed.lease_expires + 0.2, what="the first lease's end to pass")
        assert store.queue.claim("w2", wait_seconds=0.2) == [] and store.queue.task(task_id).status == "running"
        store.queue.complete(task_id, claimed.token)
        assert store.queue.task(task_id).attempts == 1 and store.queue.heartbeat([(task_id, claimed.token)]) == [task_id]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.slow  # a real process or server: not in the fast tier
def test_the_control_plane_refuses_a_wrong_key_and_keeps_serving(tmp_path, transport):
    socket_path = tmp_path / "control.sock"
    with Store.open(tmp_path / "db.duckdb", MACHINES) as store:
        server = ControlServer(store, socket_path, "the-right-key", ("127.0.0.1", 0) if transport == "tcp" else None).start()
        try:
            assert socket_path.stat().st_mode & 0o777 == 0o600
            address = server.tcp_address if transport == "tcp" else socket_path
            if transport == "tcp":
                assert address[0] == "127.0.0.1" and address[1] > 0
            with pytest.raises(ControlUnavailable, match="refused the key"):
                ControlClient(address, "a-wrong-key")
            assert ControlClient.try_connect(address, "a-wrong-key") is None
            client = ControlClient(address, "the-right-key")
            try:
                task_id = client.queue.enqueue(TaskSpec(name="via-control"))
                assert client.queue.task(task_id).status == "queued"
            finally:
                client.close()
        finally:
            server.close()


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_peer_that_never_answers_the_key_challenge_holds_up_nobody(tmp_path):
    import socket
    import threading

    with Store.open(tmp_path / "db.duckdb", MACHINES) as store:
        server = ControlServer(store, tmp_path / "control.sock", "the-right-key", ("127.0.0.1", 0)).start()
        silent = socket.create_connection(server.tcp_address)
        try:
            answered = threading.Event()

            def connect() -> None:
                client = ControlClient(server.tcp_address, "the-right-key")
                client.queue.stats()
                client.close()
                answered.set()

            threading.Thread(target=connect, daemon=True).start()
            assert answered.wait(30), "a silent peer blocked the next connection"
        finally:
            silent.close()
            server.close()


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_taken_tcp_port_stops_the_control_plane_with_the_settings_to_change(tmp_path):
    import socket

    with Store.open(tmp_path / "db.duckdb", MACHINES) as store, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ControlUnavailable, match=f"cannot listen on 127.0.0.1:{port} .*control_tcp_port"):
            ControlServer(store, tmp_path / "control.sock", "key", ("127.0.0.1", port))


@pytest.mark.slow
def test_on_dead_effects_commit_when_the_worker_is_killed_mid_task(data_dir, dropwire_env, tmp_path):
    """One attempt allowed; its worker process is killed with SIGKILL while running it. When
    the lease runs out the control plane dead-letters the task and commits its on_dead effects."""
    markers = data_dir / "markers"
    markers.mkdir()
    on_dead = Effects(transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="dataset_uploaded",
                                                     triggered_by="queue:effect_once", reason="worker lost")])
    with Store.open(data_dir / "dropwire.duckdb", MACHINES) as store:
        store.states.create("model", "m1", triggered_by="test")
        dying = store.queue.enqueue(TaskSpec(name="effect_once", max_attempts=1, on_dead=on_dead, args={
            "model_id": "m1", "marker_dir": str(markers), "first_attempt_seconds": 60}))
    control = spawn([*DROPWIRE, "control", "--tasks", "tests.storage.helpers:no_tasks"], dropwire_env, tmp_path / "control.log")
    worker = None
    try:
        wait_for(lambda: (data_dir / "control.sock").exists(), what="the control socket")
        env = {**dropwire_env, "DROPWIRE_QUEUE__WORKERS": "1"}
        worker = spawn([*DROPWIRE, "worker", "--tasks", "tests.storage.helpers:registry", "--name", "doomed"], env,
                       tmp_path / "worker.log")
        wait_for(lambda: list(markers.glob("started-1-doomed*")), what="the worker to start the task")
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: task_status(data_dir, dropwire_env, dying) == "dead", timeout=30, what="the task to be dead-lettered")
    finally:
        if worker is not None:
            stop(worker)
        assert stop(control) == 0, (tmp_path / "control.log").read_text()
    with Store.open(data_dir / "dropwire.duckdb", MACHINES) as store:
        (moved,) = [h for h in store.states.history("model", "m1") if h.trigger == "dataset_uploaded"]
        assert moved.reason == "worker lost" and "lease expired" in str(moved.metadata)
        assert "lease expired" in store.queue.dead_letter(dying).last_error
    effects, _ = effect_count_and_attempts(data_dir, dying)
    assert effects == 1  # the on_dead transition, once; the killed attempt committed nothing
