"""`dropwire worker` processes run the product's functions for an emulator whose own workers
are 0: real processes, real files in the bucket folder, a real kill -9 mid-step."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from dropwire.functions.evaluation.core.samples import sample_config, sample_dataset
from dropwire.local_emulator.control import ControlClient
from dropwire.local_emulator.settings import load_settings
from tests.conftest import DROPWIRE, REPO, unfinished_tasks, wait_for
from tests.platform.conftest import free_port
from tests.platform.test_evaluation_flow import drop

pytestmark = pytest.mark.slow

# Enough records that the evaluation step (metrics, Excel report, MLflow run: seconds here,
# where the quality check takes a tenth of one) is surely caught mid-way.
RECORDS = 30_000


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_evaluation_flow_completes_on_two_worker_processes_one_killed_mid_step(dropwire_env, data_dir, tmp_path):
    env = {**dropwire_env, "DROPWIRE_FUNCTIONS": "dropwire.functions.catalog:functions",
           "DROPWIRE_HTTP__PORT": str(free_port())}
    emulator = spawn([*DROPWIRE, "emulate"], {**env, "DROPWIRE_QUEUE__WORKERS": "0"}, tmp_path / "emulate.log")
    workers: dict[str, subprocess.Popen] = {}
    try:
        wait_for(lambda: "dropwire is up" in (tmp_path / "emulate.log").read_text(), timeout=120, what="the emulator")
        for name in ("w1", "w2"):
            workers[name] = spawn([*DROPWIRE, "worker", "--name", name], {**env, "DROPWIRE_QUEUE__WORKERS": "1"},
                                  tmp_path / f"{name}.log")
        for name in workers:
            wait_for(lambda name=name: f"worker {name} up" in (tmp_path / f"{name}.log").read_text(), timeout=180,
                     what=f"worker {name} and its handler process")
        settings = load_settings(environ={"DROPWIRE_DATA_DIR": str(data_dir)})
        client = ControlClient(settings.control_socket_path, settings.control_key())

        def state(kind: str, entity_id: str) -> str | None:
            rows = client.query("SELECT state FROM entity_states WHERE kind = ? AND entity_id = ?", [kind, entity_id])
            return rows[0][0] if rows else None

        def reach(kind: str, entity_id: str, wanted: str, timeout: float = 120) -> None:
            wait_for(lambda: state(kind, entity_id) == wanted, timeout=timeout,
                     what=lambda: f"{kind} {entity_id} to reach {wanted} (it is {state(kind, entity_id)}; tasks not "
                                  f"succeeded: {unfinished_tasks(client.query)})")

        bucket = data_dir / "bucket"
        drop(bucket, "use-cases/inv/use-case.json", json.dumps({"name": "Invoices", "team_email": "team@example.com"}))
        reach("use_case", "inv", "AWAITING_CONFIG")
        drop(bucket, "use-cases/inv/config.json", json.dumps(sample_config("inv")))
        reach("use_case", "inv", "CONFIG_VALIDATED")
        drop(bucket, "use-cases/inv/models/m/register.json", json.dumps({"name": "m", "version": "1"}))
        reach("model", "inv/m", "REGISTERED")
        drop(bucket, "use-cases/inv/models/m/dataset.csv", sample_dataset(RECORDS, error_rate=0.1, seed=7).write_csv())

        # Whichever worker holds the evaluation step is killed while the step runs.
        def running_step() -> tuple[int, str] | None:
            rows = client.query("SELECT id, worker FROM tasks WHERE status = 'running' AND name = 'fn:evaluation-run'")
            return tuple(rows[0]) if rows else None

        task_id, holder = wait_for(running_step, timeout=120, interval=0.02, what="the evaluation step to run")
        victim = holder.rsplit("-", 1)[0]
        survivor = next(name for name in workers if name != victim)
        handler_processes = children_of(workers[victim].pid)
        assert handler_processes
        workers[victim].send_signal(signal.SIGKILL)
        assert workers[victim].wait(timeout=10) == -signal.SIGKILL

        reach("model", "inv/m", "EVALUATION_COMPLETED", timeout=240)
        wait_for(lambda: not any(alive(pid) for pid in handler_processes), what="the killed worker's handler process to stop")

        task = client.queue.task(task_id)
        assert [(a.attempt, a.outcome, a.worker) for a in task.history] == [(1, "lease_expired", holder)]
        assert (task.status, task.attempts, task.worker.rsplit("-", 1)[0]) == ("succeeded", 2, survivor)
        history = client.query("SELECT \"trigger\", metadata FROM state_history WHERE kind = 'model' AND entity_id = 'inv/m' "
                               "ORDER BY seq")
        triggers = [trigger for trigger, _ in history]
        assert triggers.count("evaluation_succeeded") == 1 and triggers[-1] == "evaluation_succeeded"
        assert "attempt_failed" in triggers  # the lost attempt, recorded as the step's crash
        failed = json.loads(next(metadata for trigger, metadata in history if trigger == "attempt_failed"))
        assert f"worker {holder} stopped heartbeating" in failed["error"]
        done = json.loads(history[-1][1])
        assert done["records"] == RECORDS
        client.close()
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(timeout=60) for name, process in workers.items()}
        emulator.send_signal(signal.SIGINT)
        emulator_code = emulator.wait(timeout=60)
    assert codes[survivor] == 0, (tmp_path / f"{survivor}.log").read_text()
    assert emulator_code == 0, (tmp_path / "emulate.log").read_text()
    assert "Traceback" not in (tmp_path / "emulate.log").read_text()
    checked = subprocess.run([*DROPWIRE, "db", "check"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "is consistent" in checked.stdout, checked.stdout + checked.stderr


def test_a_handler_process_stops_when_its_worker_is_killed(dropwire_env, data_dir, tmp_path):
    """A worker killed with -9 cannot stop its handler process; the handler process stops itself
    rather than run on unseen while its task is retried elsewhere."""
    port = free_port()
    env = {**dropwire_env, "DROPWIRE_FUNCTIONS": "tests.platform.worker_functions:functions", "DROPWIRE_HTTP__PORT": str(port)}
    emulator = spawn([*DROPWIRE, "emulate"], {**env, "DROPWIRE_QUEUE__WORKERS": "0"}, tmp_path / "emulate.log")
    worker = None
    try:
        wait_for(lambda: "dropwire is up" in (tmp_path / "emulate.log").read_text(), timeout=120, what="the emulator")
        worker = spawn([*DROPWIRE, "worker", "--name", "w"], {**env, "DROPWIRE_QUEUE__WORKERS": "1"}, tmp_path / "w.log")
        wait_for(lambda: "worker w up" in (tmp_path / "w.log").read_text(), timeout=180, what="the worker")
        answer = httpx.post(f"http://127.0.0.1:{port}/functions/hold/invoke", json={"seconds": 600}, timeout=30)
        assert answer.status_code == 202, answer.text
        marker = data_dir / "bucket" / "held" / "pid"
        handler = int(wait_for(lambda: marker.exists() and marker.read_text(), what="the handler to start"))
        assert handler in children_of(worker.pid)
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=10) == -signal.SIGKILL
        # It would hold for ten minutes; it stops as soon as it sees its worker gone.
        wait_for(lambda: not alive(handler), timeout=30, what="the orphaned handler process to stop")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        emulator.send_signal(signal.SIGINT)
        assert emulator.wait(timeout=60) == 0, (tmp_path / "emulate.log").read_text()
