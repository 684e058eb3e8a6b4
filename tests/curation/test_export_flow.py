"""Exports against a real Label Studio server: a real emulator serving the product's catalog
runs a real batch (its lines on a loopback OpenAI-compatible server that echoes each prompt),
the finished batch is exported by itself or by a request file, and what Label Studio holds is
read back through its own API. Bad input and a Label Studio that is down or refuses the token
end the export failed with the error, its file still written, and a retry sends nothing twice."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import polars as pl
import pytest

from dropwire.functions.curation.handlers import export_id_of
from dropwire.local_emulator.emulator import Emulator
from tests.batches.upstream import MODEL, Upstream, chat_line
from tests.conftest import unfinished_tasks, wait_for
from tests.curation.conftest import LabelStudioServer
from tests.curation.proxy import LossyProxy
from tests.platform.conftest import emulator_settings, free_port

pytestmark = pytest.mark.slow
SENTIMENT = {"sentiment": {"kind": "classification", "labels": ["positive", "negative"]}}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


def drop(bucket: Path, key: str, content: dict | list | str) -> None:
    """A file put in place whole (a hidden name, then a rename), as an upload would."""
    target = bucket / key
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp"
    text = content if isinstance(content, str) else (
        "".join(json.dumps(line) + "\n" for line in content) if isinstance(content, list) else json.dumps(content))
    temporary.write_text(text)
    os.replace(temporary, target)


def start(data_dir: Path, upstream: Upstream, label_studio: LabelStudioServer | None, *, url: str | None = None,
          token: str | None = None, schemas: dict = SENTIMENT, **env: str) -> Emulator:
    curation = {}
    if label_studio is not None or url:
        curation = {"DROPWIRE_CURATION__LABEL_STUDIO_URL": url or label_studio.url,
                    "DROPWIRE_CURATION__LABEL_STUDIO_TOKEN": token or label_studio.token}
    return Emulator(emulator_settings(
        data_dir, DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions", DROPWIRE_BATCHES__BASE_URL=upstream.url,
        DROPWIRE_BATCHES__SAVE_EVERY_SECONDS="0.05", DROPWIRE_CURATION__SCHEMAS=json.dumps(schemas),
        DROPWIRE_CURATION__RETRY_BASE_SECONDS="0.05", DROPWIRE_CURATION__RETRY_MAX_SECONDS="0.2",
        **curation, **env)).start()


def state(emulator: Emulator, kind: str, entity_id: str) -> str | None:
    rows = emulator.store.query("SELECT state FROM entity_states WHERE kind = ? AND entity_id = ?", [kind, entity_id])
    return rows[0][0] if rows else None


def reach(emulator: Emulator, kind: str, entity_id: str, wanted: str, timeout: float = 90) -> None:
    wait_for(lambda: state(emulator, kind, entity_id) == wanted, timeout=timeout, interval=0.1,
             what=lambda: f"{kind} {entity_id} to reach {wanted} (it is {state(emulator, kind, entity_id)}; tasks not "
                          f"succeeded: {unfinished_tasks(emulator.store.query)})")


def run_batch(emulator: Emulator, name: str, lines: list[dict], metadata: dict[str, str] | None = None) -> str:
    bucket = emulator.settings.bucket_path
    if metadata:
        drop(bucket, f"batches/{name}.json", {"endpoint": "/v1/chat/completions", "metadata": metadata})
    drop(bucket, f"batches/{name}.jsonl", lines)
    batch_id = wait_for(lambda: (emulator.store.query("SELECT id FROM batches WHERE name = ?", [name]) or [[None]])[0][0],
                        timeout=60, what=f"batch {name} to be created")
    reach(emulator, "batch", batch_id, "completed")
    return batch_id


def run_schedule(emulator: Emulator, name: str) -> dict:
    """Fire a schedule now through the gateway and wait for its run to succeed; its result."""
    with httpx.Client(base_url=f"http://127.0.0.1:{emulator.settings.http.port}", timeout=30) as http:
        task_id = http.post(f"/schedules/{name}/run").json()["task_id"]
    done = wait_for(lambda: emulator.store.query("SELECT result FROM tasks WHERE id = ? AND status = 'succeeded'",
                                                 [task_id]), timeout=90, what=f"schedule {name}'s run (task {task_id})")
    return json.loads(done[0][0])


def history(emulator: Emulator, export_id: str) -> list[tuple[str, str]]:
    return [(h.trigger, h.reason) for h in emulator.store.states.snapshot("curation_export", export_id).history]


def reviews(n: int) -> list[dict]:
    return [chat_line(f"r{i}", f"{'positive' if i % 2 else 'negative'} review number {i}") for i in range(n)]


def test_a_completed_batch_is_exported_by_itself_and_a_second_run_adds_no_task(tmp_path, upstream, label_studio):
    emulator = start(tmp_path / "data", upstream, label_studio, DROPWIRE_CURATION__IMPORT_CHUNK_TASKS="2")
    try:
        batch_id = run_batch(emulator, "reviews", reviews(5), {"curation_schema": "sentiment"})
        export_id = export_id_of(batch_id, "sentiment")
        reach(emulator, "curation_export", export_id, "imported")

        project = label_studio.project(export_id)
        assert project is not None and "<Choice value=\"positive\"/>" in project["label_config"]
        tasks = label_studio.tasks(project["id"])
        assert sorted(t["data"]["custom_id"] for t in tasks) == [f"r{i}" for i in range(5)]
        for task in tasks:
            [prediction] = task["predictions"]
            wanted = "positive" if int(task["data"]["custom_id"][1:]) % 2 else "negative"
            assert prediction["model_version"] == MODEL
            assert prediction["result"] == [{"from_name": "label", "to_name": "text", "type": "choices",
                                             "value": {"choices": [wanted]}}]
            assert task["data"]["model_answer"] == f"echo: {task['data']['text']}"
        written = json.loads((emulator.settings.bucket_path / f"curation-exports/{export_id}/tasks.json").read_text())
        assert len(written) == 5 and written[0]["predictions"][0]["model_version"] == MODEL
        assert emulator.store.query("SELECT imported, project_id FROM curation_exports WHERE id = ?",
                                    [export_id]) == [(5, project["id"])]

        # The same export asked for again, by a request file: the project is reused, nothing is added.
        drop(emulator.settings.bucket_path, "curation/again.json", {"batch_id": batch_id, "schema": "sentiment"})
        wait_for(lambda: [t for t, _ in history(emulator, export_id)].count("import") == 2, timeout=60,
                 what="the second export to be imported")
        assert len(label_studio.tasks(project["id"])) == 5
        assert history(emulator, export_id)[-1][1].endswith("(0 new)")
    finally:
        emulator.stop()


def test_lines_that_do_not_fit_and_an_unknown_schema_are_named_and_nothing_is_sent(tmp_path, upstream, label_studio,
                                                                                    run_cli, dropwire_env):
    emulator = start(tmp_path / "data", upstream, label_studio)
    try:
        batch_id = run_batch(emulator, "mixed", [chat_line("fits", "positive, clearly"), chat_line("odd-one", "a banana")])
        bucket = emulator.settings.bucket_path
        drop(bucket, "curation/mixed.json", {"batch_id": batch_id, "schema": "sentiment"})
        export_id = export_id_of(batch_id, "sentiment")
        reach(emulator, "curation_export", export_id, "failed")
        trigger, reason = history(emulator, export_id)[-1]
        assert trigger == "fail" and "1 line(s) of batch" in reason and "custom_id odd-one: the answer names none" in reason
        assert [t["data"]["custom_id"] for t in json.loads((bucket / f"curation-exports/{export_id}/tasks.json").read_text())] \
            == ["fits"]
        assert json.loads((bucket / f"curation-exports/{export_id}/problems.json").read_text())[0]["custom_id"] == "odd-one"
        assert label_studio.project(export_id) is None

        # Request files that are the user's mistake: refused with their message, never a dead
        # letter (issue 24 item 5), and shown whole by the CLI.
        drop(bucket, "curation/unknown.json", {"batch_id": batch_id, "schema": "nope"})
        drop(bucket, "curation/half.json", {"batch_id": batch_id, "schema": "sentiment", "evaluate_model": "m1"})
        drop(bucket, "curation/shape.json", {"batch": batch_id})
        ended = wait_for(lambda: (rows := emulator.store.query(
            "SELECT status, last_error FROM tasks WHERE name = 'fn:curation-request' AND status IN ('refused', 'dead') "
            "ORDER BY id")) and len(rows) == 3 and rows, timeout=60, what="the three requests to be refused")
        assert [status for status, _ in ended] == ["refused"] * 3, ended
        messages = sorted(error for _, error in ended)
        assert messages[0].startswith(f"batch {batch_id}: unknown schema 'nope'; known: ['free_text', 'sentiment'] "
                                      "(add one under curation.schemas")
        assert messages[1] == "curation/shape.json: Object contains unknown field `batch` (expected " \
            '{"batch_id", "schema", "evaluate_use_case"?, "evaluate_model"?})'
        assert messages[2] == "evaluate_use_case and evaluate_model go together: name both, or neither"
        assert emulator.store.queue.dead_letters() == []
        env = {**dropwire_env, "DROPWIRE_DATA_DIR": str(emulator.settings.data_dir), "COLUMNS": "80"}
        assert run_cli("dlq", "list", env=env).stdout.strip() == "no dead letters"
        shown = run_cli("queue", "invocations", "--outcome", "refused", env=env)
        assert shown.returncode == 0, shown.stderr
        for message in messages:
            assert f"  {message}" in shown.stdout.splitlines(), shown.stdout
    finally:
        emulator.stop()


def test_label_studio_refusing_the_token_or_down_fails_the_export_and_a_retry_sends_each_task_once(
        tmp_path, upstream, label_studio):
    data = tmp_path / "data"
    wrong = "not-the-token-" + "x" * 20
    emulator = start(data, upstream, label_studio, token=wrong)
    try:
        batch_id = run_batch(emulator, "later", reviews(3), {"curation_schema": "sentiment"})
        export_id = export_id_of(batch_id, "sentiment")
        reach(emulator, "curation_export", export_id, "failed")
        reason = history(emulator, export_id)[-1][1]
        assert "answered 401" in reason and wrong not in reason
        assert emulator.store.query("SELECT retryable FROM curation_exports WHERE id = ?", [export_id]) == [(False,)]
        assert (emulator.settings.bucket_path / f"curation-exports/{export_id}/tasks.json").exists()
        # The token is in no stored row: state history, invocations, task results, the export's error.
        snapshot = emulator.store.export(tmp_path / "snapshot")
        stored = "".join(str(pl.read_parquet(part).to_dicts()) for part in snapshot.rglob("*.parquet"))
        assert "answered 401" in stored and wrong not in stored
    finally:
        emulator.stop()

    closed = f"http://127.0.0.1:{free_port()}"
    emulator = start(data, upstream, label_studio, url=closed, DROPWIRE_CURATION__MAX_ATTEMPTS="2")
    try:
        drop(emulator.settings.bucket_path, "curation/later.json", {"batch_id": batch_id, "schema": "sentiment"})
        wait_for(lambda: "could not be reached" in history(emulator, export_id)[-1][1], timeout=60,
                 what="the export to fail on the closed port")
        assert emulator.store.query("SELECT retryable FROM curation_exports WHERE id = ?", [export_id]) == [(True,)]
    finally:
        emulator.stop()
    assert label_studio.project(export_id) is None

    # Label Studio is back: the schedule retries the export that could not reach it, twice.
    emulator = start(data, upstream, label_studio)
    try:
        for _ in range(2):
            run_schedule(emulator, "curation-pull")
            reach(emulator, "curation_export", export_id, "imported")
        project = label_studio.project(export_id)
        assert sorted(t["data"]["custom_id"] for t in label_studio.tasks(project["id"])) == ["r0", "r1", "r2"]
    finally:
        emulator.stop()


def test_an_import_whose_answer_is_lost_is_not_sent_again(tmp_path, upstream, label_studio):
    # The second of three chunks reaches Label Studio, but its answer is lost (502).
    proxy = LossyProxy(label_studio.url, lose_imports={2}).start()
    emulator = start(tmp_path / "data", upstream, label_studio, url=proxy.url, DROPWIRE_CURATION__IMPORT_CHUNK_TASKS="2")
    try:
        batch_id = run_batch(emulator, "lossy", reviews(5), {"curation_schema": "sentiment"})
        export_id = export_id_of(batch_id, "sentiment")
        reach(emulator, "curation_export", export_id, "imported")
        project = label_studio.project(export_id)
        assert sorted(t["data"]["custom_id"] for t in label_studio.tasks(project["id"])) == [f"r{i}" for i in range(5)]
        assert proxy.imports == 3  # two chunks, the lost one, then only the one task still missing
        assert history(emulator, export_id)[-1][1].endswith("(5 new)")
    finally:
        emulator.stop()
        proxy.stop()


def test_a_batch_partially_processed_is_exported_with_the_lines_that_succeeded(tmp_path, upstream):
    """Lines the upstream refuses for good (400) leave the batch partially_processed: it is
    still exported by itself, and only the lines that have an answer become tasks."""
    emulator = start(tmp_path / "data", upstream, None)
    try:
        bucket = emulator.settings.bucket_path
        drop(bucket, "batches/mixed.json", {"endpoint": "/v1/chat/completions", "metadata": {"curation_schema": "sentiment"}})
        drop(bucket, "batches/mixed.jsonl", [*reviews(3), chat_line("bad", "fail this positive one")])
        batch_id = wait_for(lambda: (emulator.store.query("SELECT id FROM batches WHERE name = 'mixed'") or [[None]])[0][0],
                            timeout=60, what="batch mixed to be created")
        reach(emulator, "batch", batch_id, "partially_processed")
        export_id = export_id_of(batch_id, "sentiment")
        reach(emulator, "curation_export", export_id, "exported")
        written = json.loads((bucket / f"curation-exports/{export_id}/tasks.json").read_text())
        assert sorted(task["data"]["custom_id"] for task in written) == ["r0", "r1", "r2"]
    finally:
        emulator.stop()


TOPICS = {name: {"kind": "classification", "labels": ["billing", "shipping", "returns"]}
          for name in ("support_topics", "topic")}
TITLE_LIMIT = 50  # Label Studio refuses a longer project title (400)


def test_batches_named_as_users_name_them_reach_review_with_titles_label_studio_accepts(tmp_path, upstream, label_studio):
    """A batch dropped with an ordinary name and one made through the Batch API (named by its
    id) are exported to Label Studio: each title fits its limit and carries the export id."""
    emulator = start(tmp_path / "data", upstream, label_studio, schemas=TOPICS)
    try:
        lines = [chat_line(f"t{i}", f"a {topic} question") for i, topic in enumerate(("billing", "shipping", "returns"))]
        dropped = run_batch(emulator, "support-tickets", lines, {"curation_schema": "support_topics"})
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{emulator.settings.http.port}/v1", api_key="unused",
                               max_retries=0)
        file = client.files.create(file=("tickets.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode()),
                                   purpose="batch")
        made = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                                     metadata={"curation_schema": "topic"}).id
        reach(emulator, "batch", made, "completed")
        for batch_id, schema in ((dropped, "support_topics"), (made, "topic")):
            export_id = export_id_of(batch_id, schema)
            reach(emulator, "curation_export", export_id, "imported")
            project = label_studio.project(export_id)
            assert len(project["title"]) <= TITLE_LIMIT and f"[{export_id}]" in project["title"], project["title"]
            assert sorted(t["data"]["custom_id"] for t in label_studio.tasks(project["id"])) == ["t0", "t1", "t2"]
            assert emulator.store.query("SELECT project_title FROM curation_exports WHERE id = ?",
                                        [export_id]) == [(project["title"],)]
        assert label_studio.project(export_id_of(dropped, "support_topics"))["title"].startswith("dropwire support")
    finally:
        emulator.stop()


def test_a_re_export_that_names_no_evaluation_target_keeps_the_one_the_batch_gave(tmp_path, upstream, label_studio):
    """The batch's metadata names the use case and model its reviews are evaluated for; the
    export asked for again by a request file naming neither keeps them, so a review pulled
    after is still written where the evaluation workflow reads it."""
    emulator = start(tmp_path / "data", upstream, label_studio)
    try:
        batch_id = run_batch(emulator, "graded", reviews(2), {"curation_schema": "sentiment",
                                                              "curation_use_case": "shop", "curation_model": "m1"})
        export_id = export_id_of(batch_id, "sentiment")
        reach(emulator, "curation_export", export_id, "imported")
        drop(emulator.settings.bucket_path, "curation/again.json", {"batch_id": batch_id, "schema": "sentiment"})
        wait_for(lambda: [t for t, _ in history(emulator, export_id)].count("import") == 2, timeout=60,
                 what="the second export to be imported")
        assert emulator.store.query("SELECT evaluate_use_case, evaluate_model FROM curation_exports WHERE id = ?",
                                    [export_id]) == [("shop", "m1")]

        [task, _] = label_studio.tasks(label_studio.project(export_id)["id"])
        with label_studio.api() as api:
            assert api.post(f"/api/tasks/{task['id']}/annotations", json={"was_cancelled": False, "result": [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["positive"]}}]}
            ).status_code == 201
        with httpx.Client(base_url=f"http://127.0.0.1:{emulator.settings.http.port}", timeout=90) as gateway:
            pulled = gateway.post("/functions/curation-pull/invoke", params={"wait": 60}, json={"export_id": export_id})
        assert pulled.json()["result"]["written"] == [f"curation-datasets/{export_id}/dataset.csv",
                                                     "use-cases/shop/models/m1/dataset.csv"], pulled.text
    finally:
        emulator.stop()
