"""Handlers as Ray tasks and the runtime on Ray Serve, against one real multi-node Ray cluster
on loopback (a head without CPUs, two one-CPU worker nodes) and a bucket on moto's S3
server: the evaluation workflow with every handler on Ray, a worker node killed mid-step,
a handler cancelled past its timeout, results that cannot come back, resource hints, an
address that does not answer, and a forecast from the Serve deployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Read by Ray when it is imported: every node of the test clusters on 127.0.0.1, no usage report.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(RAY_ENV)
pytest.importorskip("ray")

import ray
from ray import cluster_utils

from dropwire.local_emulator.emulator import Emulator
from dropwire.local_emulator.ray_executor import RayExecutor
from tests.conftest import DROPWIRE, REPO, SUBPROCESS_PYTHONPATH, unfinished_tasks, wait_for
from tests.platform.conftest import emulator_settings, free_port
from tests.platform.moto_server import CREDENTIALS, moto_server, notifying_bucket

pytestmark = pytest.mark.slow

NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
# Enough records that the evaluation step (metrics, Excel report, MLflow run) is surely caught mid-way.
RECORDS = 30_000


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[cluster_utils.Cluster]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "object_store_memory": NODE["object_store_memory"]})
        try:
            for _ in range(2):
                cluster.add_node(**NODE)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def moto(ray_cluster) -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def ray_settings(data_dir: Path, cluster: cluster_utils.Cluster, **env: str):
    """The Ray executor, its tasks reaching the control plane over TCP on loopback."""
    return emulator_settings(data_dir, DROPWIRE_EXECUTOR__KIND="ray", DROPWIRE_EXECUTOR__RAY_ADDRESS=cluster.address,
                             DROPWIRE_CONTROL_TCP_PORT=str(free_port()),
                             DROPWIRE_QUEUE__LEASE_SECONDS="3", DROPWIRE_QUEUE__HEARTBEAT_SECONDS="0.5", **env)


def s3_settings(data_dir: Path, cluster: cluster_utils.Cluster, endpoint: str, bucket: str):
    _, _, queue_url = notifying_bucket(endpoint, bucket)
    return ray_settings(data_dir, cluster, DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                        DROPWIRE_EVENTS__S3_ENDPOINT_URL=endpoint, DROPWIRE_EVENTS__BUCKET_S3=bucket,
                        DROPWIRE_EVENTS__SQS_QUEUE_URL=queue_url)


def ray_workers_running(task_title: str) -> list[int]:
    """Ray worker processes now running a task of that name (Ray titles them ray::<name>)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[0].decode(errors="replace") == f"ray::{task_title}":
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class Flow:
    """The evaluation workflow driven through the S3 bucket, read back from the store."""

    def __init__(self, emulator: Emulator, endpoint: str, bucket: str) -> None:
        import boto3

        self.emulator, self.bucket = emulator, bucket
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def state(self, kind: str, entity_id: str) -> str | None:
        rows = self.emulator.store.query("SELECT state FROM entity_states WHERE kind = ? AND entity_id = ?",
                                         [kind, entity_id])
        return rows[0][0] if rows else None

    def reach(self, kind: str, entity_id: str, wanted: str, timeout: float = 120) -> None:
        wait_for(lambda: self.state(kind, entity_id) == wanted, timeout=timeout,
                 what=lambda: f"{kind} {entity_id} to reach {wanted} (it is {self.state(kind, entity_id)}; tasks not "
                              f"succeeded: {unfinished_tasks(self.emulator.store.query)})")

    def put(self, key: str, body: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body.encode())

    def up_to_dataset(self, use_case: str, rows_csv: str) -> None:
        from dropwire.functions.evaluation.core.samples import sample_config

        self.put(f"use-cases/{use_case}/use-case.json", json.dumps({"name": use_case, "team_email": "team@example.com"}))
        self.reach("use_case", use_case, "AWAITING_CONFIG")
        self.put(f"use-cases/{use_case}/config.json", json.dumps(sample_config(use_case)))
        self.reach("use_case", use_case, "CONFIG_VALIDATED")
        self.put(f"use-cases/{use_case}/models/m/register.json", json.dumps({"name": "m", "version": "1"}))
        self.reach("model", f"{use_case}/m", "REGISTERED")
        self.put(f"use-cases/{use_case}/models/m/dataset.csv", rows_csv)


def db_check(data_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWIRE_")}
    checked = subprocess.run([*DROPWIRE, "db", "check"], env={**env, "DROPWIRE_DATA_DIR": str(data_dir),
                                                              "PYTHONPATH": SUBPROCESS_PYTHONPATH},
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    return checked.stdout + checked.stderr


def test_the_evaluation_workflow_runs_every_handler_on_ray(ray_cluster, moto, tmp_path):
    from dropwire.functions.evaluation.core.samples import sample_dataset

    settings = s3_settings(tmp_path / "data", ray_cluster, moto, "flow-data")
    with Emulator(settings, serve_http=False) as emulator:
        assert isinstance(emulator.workers.executor, RayExecutor)
        flow = Flow(emulator, moto, "flow-data")
        flow.up_to_dataset("inv", sample_dataset(200, error_rate=0.1, seed=3).write_csv())
        flow.reach("model", "inv/m", "EVALUATION_COMPLETED")
        done = emulator.store.states.snapshot("model", "inv/m").history[-1].metadata
        assert done["report"] == "s3://flow-data/evaluation-results/inv/m/1/report.xlsx"
        report = flow.s3.get_object(Bucket="flow-data", Key="evaluation-results/inv/m/1/report.xlsx")["Body"].read()
        assert report[:2] == b"PK"
        outcomes = emulator.store.query("SELECT function, outcome FROM invocations ORDER BY started_at")
        assert {function for function, _ in outcomes} >= {"evaluation-use-case", "evaluation-config", "evaluation-model",
                                                          "evaluation-dataset", "evaluation-quality-check",
                                                          "evaluation-run"}
        assert {outcome for _, outcome in outcomes} == {"succeeded"}
    assert "is consistent" in db_check(tmp_path / "data")


def test_files_put_in_reverse_order_wait_for_each_other_on_ray_and_a_mistake_is_refused(ray_cluster, moto, tmp_path):
    """S3 never promised order: each file whose prerequisite has not landed waits for it (its
    Ray task's NotYet reaches the control plane), and a second use-case.json is refused."""
    from dropwire.functions.evaluation.core.samples import sample_config, sample_dataset

    settings = s3_settings(tmp_path / "data", ray_cluster, moto, "order-data")
    with Emulator(settings, serve_http=False) as emulator:
        flow = Flow(emulator, moto, "order-data")
        flow.put("use-cases/rev/models/m/dataset.csv", sample_dataset(50, error_rate=0.1, seed=5).write_csv())
        flow.put("use-cases/rev/models/m/register.json", json.dumps({"name": "m", "version": "1"}))
        flow.put("use-cases/rev/config.json", json.dumps(sample_config("rev")))
        flow.put("use-cases/rev/use-case.json", json.dumps({"name": "rev", "team_email": "team@example.com"}))
        flow.reach("model", "rev/m", "EVALUATION_COMPLETED")
        assert flow.state("use_case", "rev") == "CONFIG_VALIDATED"
        flow.put("use-cases/rev/use-case.json", json.dumps({"name": "rev again", "team_email": "team@example.com"}))
        refused = wait_for(lambda: emulator.store.query("SELECT error FROM invocations WHERE outcome = 'refused'"),
                           what="the second use-case.json to be refused")
        assert refused == [("use-cases/rev/use-case.json: use case 'rev' already exists (state CONFIG_VALIDATED); "
                            "a use case is registered once",)]
        assert emulator.store.queue.dead_letters() == []


def test_a_worker_node_killed_mid_step_is_a_failed_attempt_and_the_effect_commits_once(ray_cluster, moto, tmp_path):
    from dropwire.functions.evaluation.core.samples import sample_dataset

    settings = s3_settings(tmp_path / "data", ray_cluster, moto, "kill-data")
    with Emulator(settings, serve_http=False) as emulator:
        flow = Flow(emulator, moto, "kill-data")
        flow.up_to_dataset("inv", sample_dataset(RECORDS, error_rate=0.1, seed=7).write_csv())
        pids = wait_for(lambda: ray_workers_running("dropwire:evaluation-run"), timeout=120, interval=0.02,
                        what="the evaluation step to run on a Ray worker")
        raylet = parent_of(pids[0])
        victim = next(node for node in ray_cluster.worker_nodes
                      if node.all_processes["raylet"][0].process.pid == raylet)
        ray_cluster.remove_node(victim, allow_graceful=False)
        ray_cluster.add_node(**NODE)  # the cluster keeps its size; the retry may land anywhere
        flow.reach("model", "inv/m", "EVALUATION_COMPLETED", timeout=240)

        (task_id,) = emulator.store.query("SELECT id FROM tasks WHERE name = 'fn:evaluation-run'")[0]
        task = emulator.store.queue.task(task_id)
        assert (task.status, task.attempts) == ("succeeded", 2)
        assert "was lost" in task.history[0].error, task.history
        history = emulator.store.states.snapshot("model", "inv/m").history
        triggers = [change.trigger for change in history]
        assert triggers.count("evaluation_succeeded") == 1 and triggers[-1] == "evaluation_succeeded"
        assert history[-1].metadata["records"] == RECORDS
    assert "is consistent" in db_check(tmp_path / "data")


@pytest.fixture
def ray_emulator(ray_cluster, tmp_path) -> Iterator[tuple[Emulator, httpx.Client]]:
    settings = ray_settings(tmp_path / "data", ray_cluster, DROPWIRE_FUNCTIONS="tests.platform.ray_functions:functions")
    with Emulator(settings) as emulator, httpx.Client(base_url=f"http://127.0.0.1:{settings.http.port}",
                                                      timeout=120) as client:
        yield emulator, client


def invoke(client: httpx.Client, function: str, body: object) -> dict:
    answer = client.post(f"/functions/{function}/invoke", params={"wait": 90}, json=body)
    if answer.status_code == 409:  # the function failed: the answer is the one error shape, the task tells the rest
        assert answer.json()["error"] == "refused_by_handler", answer.text
        answer = client.get(answer.json()["details"]["status_url"])
    assert answer.status_code in (200, 202), answer.text
    status = answer.json()
    assert status.get("status") in ("succeeded", "dead"), status
    return status


def test_a_handler_over_its_timeout_is_cancelled_and_its_ray_worker_stopped(ray_emulator):
    emulator, client = ray_emulator
    status = invoke(client, "sleepy", {"seconds": 600})
    assert status["status"] == "dead"
    assert "ran past its timeout (3.0s) and its Ray task was cancelled" in status["last_error"]
    wait_for(lambda: not ray_workers_running("dropwire:sleepy"), timeout=30, what="the cancelled Ray worker to stop")
    (outcome,) = emulator.store.query("SELECT outcome FROM invocations WHERE function = 'sleepy'")[0]
    assert outcome == "timed_out"


def test_a_result_that_cannot_come_back_is_a_failed_attempt_with_its_reason(ray_emulator):
    _, client = ray_emulator
    status = invoke(client, "unencodable", {})
    assert status["status"] == "dead"
    assert "the handler's result cannot be encoded" in status["last_error"]


def test_a_task_on_a_worker_node_reaches_the_control_plane_over_tcp_and_a_wrong_key_is_refused(ray_cluster, ray_emulator):
    emulator, client = ray_emulator
    status = invoke(client, "control-reach", {})
    assert status["status"] == "succeeded", status
    reach = status["result"]
    # The head has no CPUs: the task ran on a worker node, and its handlers' connection is TCP
    # to the control plane's listener, over which its call was answered.
    assert reach["node"] != ray_cluster.head_node.node_id
    assert reach["family"] == "AF_INET" and reach["peer"] == ["127.0.0.1", emulator.settings.control_tcp_port]
    assert reach["by_status"].get("running") == 1  # itself, as the control plane sees it
    assert reach["refused"] == (f"the control plane on 127.0.0.1:{emulator.settings.control_tcp_port} refused the key "
                                "(setting control_authkey, or the data dir's control.key)")


def test_resource_hints_become_the_ray_tasks_resources(ray_emulator):
    from tests.platform.ray_functions import HINTS

    _, client = ray_emulator
    status = invoke(client, "hinted", {})
    assert status["status"] == "succeeded", status
    assert status["result"] == {"CPU": HINTS.cpus, "memory": HINTS.memory_bytes}


def test_an_address_that_does_not_answer_stops_the_emulator_with_one_line(ray_cluster, dropwire_env):
    address = f"127.0.0.1:{free_port()}"
    started = subprocess.run([*DROPWIRE, "emulate", "--executor", "ray", "--ray-address", address],
                             env={**dropwire_env, **RAY_ENV, "DROPWIRE_HTTP__PORT": str(free_port())}, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode != 0
    errors = [line for line in started.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"the Ray cluster at {address} does not answer" in errors[0], started.stderr


def test_the_runtime_deployment_answers_a_forecast(ray_cluster, tmp_path):
    from dropwire.runtime import ray_serve
    from dropwire.runtime.model_source import ModelSource
    from dropwire.runtime.settings import RuntimeSettings
    from dropwire.runtime.synthetic import generated_csv
    from dropwire.runtime.training import train_default_model

    model = tmp_path / "tiny.pt"
    train_default_model(model, steps=60, seed=0, context_length=8, hidden_size=16, num_layers=1)
    settings = RuntimeSettings(host="127.0.0.1", port=free_port(), model_path=str(model), horizon=6, num_samples=200,
                               grid_points=64, plot_paths=4, torch_threads=1, batch_size=4, background_chunk=2)
    source = ModelSource.from_settings(settings, default_path=model, tracking_uri="")
    ray.init(address=ray_cluster.address, namespace="dropwire-runtime-test")
    try:
        url = ray_serve.deploy(settings, source, text_model_dir=tmp_path / "text-model", cpus_per_replica=0)
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/health").status_code == 200
            answer = client.post("/quick-draw", content=generated_csv(40, seed=13), headers={"content-type": "text/csv"})
            assert answer.status_code == 200, answer.text
            forecast = answer.json()
            assert (forecast["horizon"], forecast["source"]) == (settings.horizon, "interactive")
            assert len(forecast["timestamps"]) == settings.horizon
        ray_serve.undeploy()
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def test_a_cluster_that_goes_away_leaves_its_invocations_to_the_queue(ray_cluster, dropwire_env, data_dir, tmp_path):
    """Its own small cluster (the session's stays up), the emulator a real process: the whole
    cluster killed under a running invocation; the emulator says so, the task's lease lapses
    and it is back in the queue, not failed and not lost; and the emulator outlives the point
    where Ray ends a driver whose cluster is gone (a plain driver beside it shows when)."""
    from dropwire.local_emulator.control import ControlClient
    from dropwire.local_emulator.settings import load_settings

    doomed = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                         "object_store_memory": NODE["object_store_memory"]})
    port = free_port()
    # Ray's own limit made short (its default is 60 s): without the executor's own for its
    # driver, the emulator would be ended 2 s after the cluster, before the plain driver (4 s).
    gcs_limit = "RAY_gcs_rpc_server_reconnect_timeout_s"
    env = {**dropwire_env, **RAY_ENV, "DROPWIRE_FUNCTIONS": "tests.platform.ray_functions:functions",
           "DROPWIRE_HTTP__PORT": str(port), "DROPWIRE_QUEUE__WORKERS": "1", gcs_limit: "2"}
    log = tmp_path / "emulate.log"
    emulator = subprocess.Popen([*DROPWIRE, "emulate", "--executor", "ray", "--ray-address", doomed.address], env=env,
                                cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    plain_log = tmp_path / "plain-driver.log"
    plain = subprocess.Popen([sys.executable, "-c", "import sys, time, ray; ray.init(address=sys.argv[1]); "
                              "print('connected', flush=True); time.sleep(600)", doomed.address],
                             env={**os.environ, **RAY_ENV, gcs_limit: "4"}, stdout=plain_log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "dropwire is up" in log.read_text(), timeout=120, what="the emulator")
        wait_for(lambda: "connected" in plain_log.read_text(), timeout=120, what="the plain Ray driver")
        answer = httpx.post(f"http://127.0.0.1:{port}/functions/hold/invoke", json={"seconds": 600}, timeout=30)
        task_id = answer.json()["task_id"]
        wait_for(lambda: ray_workers_running("dropwire:hold"), timeout=60, what="the invocation to run on Ray")
        doomed.head_node.kill_all_processes(check_alive=False, allow_graceful=False)
        wait_for(lambda: "went away" in log.read_text(), timeout=60, what="the emulator to say the cluster went away")
        assert f"task {task_id} returns to the queue when its lease expires" in log.read_text()
        assert doomed.address.startswith("127.0.0.1:")
        settings = load_settings(environ={"DROPWIRE_DATA_DIR": str(data_dir)})
        client = ControlClient(settings.control_socket_path, settings.control_key())
        try:
            back = wait_for(lambda: (lambda t: t if t.status == "queued" else None)(client.queue.task(task_id)),
                            timeout=60, what="the task to be back in the queue")
            assert [a.outcome for a in back.history] == ["lease_expired"] and back.attempts < back.max_attempts
        finally:
            client.close()
        wait_for(lambda: plain.poll() is not None, timeout=120, what="Ray to end the plain driver")
        assert "Failed to connect to GCS within 4 seconds" in plain_log.read_text()
        assert emulator.poll() is None, log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        assert "Failed to connect to GCS" not in log.read_text()
    finally:
        plain.kill()
        plain.wait()
        emulator.send_signal(2)
        try:
            emulator.wait(timeout=60)
        except subprocess.TimeoutExpired:
            emulator.kill()
            emulator.wait()
