"""The official openai client end to end over real HTTP against a real gateway, its batch
lines answered by a real OpenAI-compatible server: files, batches, pagination, cancel,
content, delete, and the bad input the issue names."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.batches.conftest import TOKEN, assert_openai_shape, finished, jsonl, read_lines, upload
from tests.batches.upstream import chat_line
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


def test_a_batch_through_the_official_client(start_batches, upstream):
    emulator, client = start_batches()
    lines = [chat_line(f"req-{i}", f"hello number {i}") for i in range(12)]
    lines[3] = chat_line("req-3", "please fail")
    lines[5] = chat_line("req-5", "a flaky one")
    file = upload(client, lines)
    assert file.purpose == "batch" and file.bytes > 0 and file.filename == "input.jsonl" and file.object == "file"
    assert client.files.retrieve(file.id).id == file.id

    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"team": "search"})
    assert batch.status == "validating" and batch.metadata == {"team": "search"} and batch.object == "batch"
    done = finished(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 11, 1)
    assert done.model == "echo-1" and done.completed_at >= done.finalizing_at >= done.in_progress_at >= done.created_at
    assert done.usage.input_tokens == done.usage.output_tokens > 0

    output = read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(12) if i != 3]  # input order
    assert output[0]["response"]["status_code"] == 200 and output[0]["error"] is None
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello number 0"
    assert output[4]["custom_id"] == "req-5"  # answered after a 429 with retry-after-ms
    errors = read_lines(client, done.error_file_id)
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("req-3", 400)]
    assert upstream.priorities["background"] >= 12 and upstream.priorities["interactive"] == 0

    failed_rows = emulator.store.query("SELECT custom_id, error_code, attempts FROM batch_failed_requests")
    assert failed_rows == [("req-3", "http_400", 1)]
    history = [h.to_state for h in emulator.store.states.history("batch", batch.id)]
    # One line failed for good: the workflow state is partially_processed, OpenAI's status completed.
    assert history == ["validating", "in_progress", "finalizing", "partially_processed"] and done.status == "completed"

    # Pagination over real pages, newest first.
    more = [client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h").id
            for _ in range(2)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == more[::-1] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in second.data] == [batch.id] and not second.has_more
    assert [b.id for b in client.batches.list(limit=2)] == [*more[::-1], batch.id]

    # Cancelling a finished batch: 409 naming its status.
    with pytest.raises(openai.ConflictError) as refused:
        client.batches.cancel(batch.id)
    assert "completed" in refused.value.response.json()["message"]

    # Deleting a file: gone for retrieve and content alike.
    assert client.files.delete(file.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(file.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)
    # ...while the finished batch's output still reads.
    assert len(read_lines(client, done.output_file_id)) == 11


def test_validation_names_every_problem_with_its_line(start_batches):
    emulator, client = start_batches()
    lines = [chat_line("a", "one"), chat_line("b", "two"), chat_line("a", "three"),
             chat_line("c", "four", url="/v1/embeddings"), {"custom_id": "d", "method": "GET", "url": "/v1/chat/completions",
                                                            "body": {"model": "echo-1"}},
             {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "echo-1"}},
             {"custom_id": "f", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}},
             chat_line("g", "five", model="no-such-model")]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = finished(client, batch.id)
    assert done.status == "failed" and done.failed_at and done.output_file_id is None
    found = [(e.code, e.line, e.param) for e in done.errors.data]
    assert found == [("duplicate_custom_id", 3, "custom_id"), ("mismatched_url", 4, "url"), ("invalid_method", 5, "method"),
                     ("missing_custom_id", 6, "custom_id"), ("missing_model", 7, "body.model"),
                     ("unknown_model", 8, "body.model")]
    assert "line 3 repeats custom_id 'a' of line 1" in done.errors.data[0].message
    # The same problems beside where its output would have gone.
    written = emulator.settings.bucket_path / "batch-outputs" / batch.id / "validation-errors.jsonl"
    assert [json.loads(line) for line in written.read_text().splitlines()] == [e.to_dict() for e in done.errors.data]


def test_bad_input_gets_clear_errors(start_batches):
    _, client = start_batches(DROPWIRE_BATCHES__MAX_BYTES="2000")
    with pytest.raises(openai.BadRequestError) as not_utf8:
        upload(client, b'{"custom_id": "x"}\n{"custom_id": "\xff"}\n')
    assert "line 2 is not UTF-8" in not_utf8.value.response.json()["message"]
    with pytest.raises(openai.BadRequestError) as not_json:
        upload(client, b'{"custom_id": "x"}\nnot json\n')
    assert "line 2 is not valid JSON" in not_json.value.response.json()["message"]
    with pytest.raises(openai.APIStatusError) as too_large:
        upload(client, b'{"custom_id": "x"}\n' * 200)
    assert too_large.value.status_code == 413 and "2000 bytes" in too_large.value.response.json()["message"]
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", b'{"a": 1}\n'), purpose="fine-tune")
    assert "purpose" in purpose.value.response.json()["message"]

    file = upload(client, [chat_line("a", "one")])
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="48h")
    assert "completion_window" in window.value.response.json()["message"]
    for call in (lambda: client.batches.retrieve("batch_nope"), lambda: client.batches.cancel("batch_nope"),
                 lambda: client.files.retrieve("file-nope"),
                 lambda: client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                                               completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as missing:
            call()
        assert set(missing.value.response.json()) == {"error", "message", "details", "timestamp"}


def test_every_object_and_error_is_in_the_official_clients_shape(start_batches):
    """Batch (errors list, request counts, usage), file objects, error-file lines and HTTP
    errors exactly as the openai package's types declare them: nothing it would drop."""
    _emulator, client = start_batches()
    http = client.with_options().with_raw_response
    bad = client.batches.create(input_file_id=upload(client, [chat_line("a", "one"), chat_line("a", "two")]).id,
                                endpoint="/v1/chat/completions", completion_window="24h")
    failed = finished(client, bad.id)
    assert failed.status == "failed"
    raw = http.batches.retrieve(bad.id).http_response.json()
    assert_openai_shape(raw, openai.types.Batch)
    assert raw["errors"]["object"] == "list"
    assert raw["errors"]["data"] == [{"code": "duplicate_custom_id", "line": 2, "param": "custom_id",
                                      "message": "line 2 repeats custom_id 'a' of line 1"}]

    lines = [chat_line("ok", "hello"), chat_line("no", "please fail")]
    done = finished(client, client.batches.create(input_file_id=upload(client, lines).id,
                                                  endpoint="/v1/chat/completions", completion_window="24h").id)
    raw = http.batches.retrieve(done.id).http_response.json()
    assert_openai_shape(raw, openai.types.Batch)
    assert raw["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    for file_id in (done.input_file_id, done.output_file_id, done.error_file_id):
        assert_openai_shape(http.files.retrieve(file_id).http_response.json(), openai.types.FileObject)
    assert_openai_shape(http.batches.list().http_response.json()["data"][0], openai.types.Batch)
    (error_line,) = read_lines(client, done.error_file_id)
    assert set(error_line) == {"id", "custom_id", "response", "error"} and error_line["custom_id"] == "no"
    assert error_line["response"]["status_code"] == 400 and error_line["error"] is None

    # HTTP errors carry OpenAI's error object, so the client's error has its code and param.
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_nope")
    assert (missing.value.code, missing.value.type) == ("batch_not_found", "invalid_request_error")
    assert "batch_nope" in missing.value.message
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(input_file_id=done.input_file_id, endpoint="/v1/chat/completions",
                              completion_window="48h")
    assert window.value.param == "completion_window"
    with pytest.raises(openai.ConflictError) as finished_already:
        client.batches.cancel(done.id)
    assert finished_already.value.code == "batch_not_cancellable"


def test_an_upload_streams_into_the_bucket_and_one_over_the_limit_leaves_nothing(start_batches):
    """POST /v1/files never holds the body: its bytes are in the bucket before the upload has
    ended; past batches.max_bytes it is refused with 413 naming the limit, nothing stored."""
    emulator, client = start_batches(DROPWIRE_BATCHES__MAX_BYTES=str(4 * 2**20))
    folder = emulator.settings.bucket_path / "batch-files"
    line = json.dumps(chat_line("x", "y" * 900)).encode() + b"\n"
    boundary = "dropwire-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    url = f"{client.base_url}files"
    headers = {"Authorization": f"Bearer {client.api_key}", "Content-Type": f"multipart/form-data; boundary={boundary}"}

    def stored() -> int:
        return sum(path.stat().st_size for path in folder.glob("*")) if folder.exists() else 0

    def body(lines: int, wait_for_bucket: bool):
        yield head
        yield line * 1000  # ~1 MB
        if wait_for_bucket:
            wait_for(lambda: stored() > 0, timeout=30, what="the first megabyte to reach the bucket")
        for _ in range(lines // 1000 - 1):
            yield line * 1000
        yield tail

    answer = httpx.post(url, content=body(3000, True), headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    file = client.files.retrieve(answer.json()["id"])
    assert file.bytes == 3000 * len(line) and client.files.content(file.id).content == line * 3000
    assert stored() == file.bytes  # the stored object alone: no temporary left

    refused = httpx.post(url, content=body(6000, False), headers=headers, timeout=60)
    assert refused.status_code == 413 and f"limit of {4 * 2**20} bytes" in refused.json()["message"]
    assert refused.json()["error"]["code"] == "file_too_large"
    assert stored() == file.bytes  # nothing of the refused upload stayed
    assert [f.id for f in client.files.list()] == [file.id]


def test_expires_after_is_bounded_and_an_expired_file_is_gone_then_swept(start_batches):
    """OpenAI's expires_after: seconds within 3600..2592000 (else 400 naming the field); a
    file past its expires_at reads as 404, its bytes removed by the scheduled sweep."""
    emulator, client = start_batches()
    content = jsonl([chat_line("a", "one")])
    for seconds in (3599, 2592001):
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("x.jsonl", content), purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": seconds})
        assert refused.value.param == "expires_after[seconds]" and "3600" in refused.value.message
    with pytest.raises(openai.BadRequestError) as anchor:
        client.files.create(file=("x.jsonl", content), purpose="batch",
                            expires_after={"anchor": "last_active_at", "seconds": 3600})
    assert anchor.value.param == "expires_after[anchor]"
    kept = client.files.create(file=("kept.jsonl", content), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 3600})
    assert kept.expires_at == kept.created_at + 3600

    # A file uploaded two hours ago with an hour to live: registered as the upload would have
    # left it (bytes in the bucket, then the files function), since no test waits an hour.
    port, auth = emulator.settings.http.port, {"Authorization": f"Bearer {client.api_key}"}
    key = "batch-files/file-old.jsonl"
    assert httpx.put(f"http://127.0.0.1:{port}/buckets/local/objects/{key}", content=content, headers=auth).status_code == 201
    now = time.time()
    invoked = httpx.post(f"http://127.0.0.1:{port}/functions/batches-files/invoke", headers=auth, json={
        "action": "add", "id": "file-old", "filename": "old.jsonl", "purpose": "batch", "bytes": len(content),
        "key": key, "created_at": now - 7200, "expires_at": now - 3600})
    assert invoked.status_code == 202
    wait_for(lambda: emulator.store.query("SELECT count(*) FROM batch_files WHERE id = 'file-old'")[0][0] == 1,
             timeout=30, what="the old file's row")
    for call in (lambda: client.files.retrieve("file-old"), lambda: client.files.content("file-old"),
                 lambda: client.batches.create(input_file_id="file-old", endpoint="/v1/chat/completions",
                                               completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as gone:
            call()
        assert gone.value.code == "file_not_found"
    assert [f.id for f in client.files.list()] == [kept.id]
    stored = emulator.settings.bucket_path / key
    assert stored.exists()  # until the sweep

    swept = httpx.post(f"http://127.0.0.1:{port}/schedules/batches-remove-files/run", headers=auth)
    assert swept.status_code == 202
    wait_for(lambda: not stored.exists(), timeout=30, what="the sweep to remove the expired file's bytes")
    wait_for(lambda: emulator.store.query("SELECT deleted_at IS NOT NULL FROM batch_files WHERE id = 'file-old'")
             == [(True,)], timeout=30, what="the expired file's row marked deleted")
    assert (emulator.settings.bucket_path / "batch-files" / f"{kept.id}.jsonl").exists()  # not expired: kept


def test_a_deleted_file_loses_its_bytes_but_a_running_batch_reads_its_input_to_the_end(start_batches):
    emulator, client = start_batches(DROPWIRE_BATCHES__CONCURRENCY="1")
    port, auth = emulator.settings.http.port, {"Authorization": f"Bearer {client.api_key}"}
    stored = lambda file_id: emulator.settings.bucket_path / "batch-files" / f"{file_id}.jsonl"
    source = upload(client, [chat_line(f"s{i}", f"slow {i}") for i in range(6)])
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    finished(client, batch.id, states=("in_progress",))

    other = upload(client, [chat_line("x", "hello")], name="other.jsonl")
    assert stored(other.id).exists()
    assert client.files.delete(other.id).deleted
    assert not stored(other.id).exists()  # no batch reads it: its bytes go with it

    assert client.files.delete(source.id).deleted  # the running batch's input
    with pytest.raises(openai.NotFoundError):
        client.files.content(source.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(source.id)
    assert stored(source.id).exists()  # kept while the batch reads it
    done = finished(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 6
    assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == [f"s{i}" for i in range(6)]

    assert httpx.post(f"http://127.0.0.1:{port}/schedules/batches-remove-files/run", headers=auth).status_code == 202
    wait_for(lambda: not stored(source.id).exists(), timeout=30, what="the sweep to remove the ended batch's input")
    wait_for(lambda: emulator.store.query("SELECT count(*) FROM batch_files WHERE removed_at IS NULL AND deleted_at "
                                          "IS NOT NULL")[0][0] == 0, timeout=30, what="both rows marked removed")


def test_an_upload_past_the_gateways_own_limit_is_refused_naming_the_file_limit(start_batches):
    emulator, client = start_batches(DROPWIRE_HTTP__MAX_UPLOAD_BYTES="100000")
    with pytest.raises(openai.APIStatusError) as refused:
        upload(client, json.dumps(chat_line("x", "y" * 500)).encode() * 400)
    assert refused.value.status_code == 413 and refused.value.code == "file_too_large"
    assert "at most" in refused.value.message and "batches.max_bytes" in refused.value.message
    assert not list((emulator.settings.bucket_path / "batch-files").glob("*"))


def test_an_upload_over_max_lines_is_413_and_every_refusal_lists_its_problems_as_json(start_batches):
    """Past batches.max_lines is 413 as the README and the OpenAPI document say (not 400);
    each refusal's details.errors is a list of OpenAI's error objects, not JSON in a string."""
    emulator, client = start_batches(DROPWIRE_BATCHES__MAX_LINES="3")
    operation = httpx.get(f"http://127.0.0.1:{emulator.settings.http.port}/schema/openapi.json",
                          headers={"Authorization": f"Bearer {client.api_key}"}, timeout=30).json()
    assert "413" in operation["paths"]["/v1/files"]["post"]["responses"]
    with pytest.raises(openai.APIStatusError) as too_many:
        upload(client, [chat_line(f"r{i}", "hi") for i in range(5)])
    assert too_many.value.status_code == 413 and too_many.value.code == "too_many_lines"
    body = too_many.value.response.json()
    assert body["details"]["errors"] == [{"code": "too_many_lines", "line": 4, "param": None, "message":
                                          "the file has more than the limit of 3 requests (batches.max_lines)"}]
    with pytest.raises(openai.BadRequestError) as malformed:
        upload(client, b'{"custom_id": "x"}\nnot json\n[1]\n')
    errors = malformed.value.response.json()["details"]["errors"]
    assert [(e["code"], e["line"]) for e in errors] == [("invalid_json_line", 2), ("invalid_json_line", 3)]
    assert not list((emulator.settings.bucket_path / "batch-files").glob("*"))


def test_a_users_mistakes_are_refused_with_their_message_never_dead_lettered(start_batches, run_cli, dropwire_env):
    """Cancel of a finished batch (reaching the handler), a retry with nothing to retry and a
    body of the wrong shape: the same 409 and message as before, recorded as refused, no dead
    letter (issue 24 item 5)."""
    emulator, client = start_batches()
    batch = client.batches.create(input_file_id=upload(client, [chat_line("a", "one"), chat_line("b", "two")]).id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    assert finished(client, batch.id).status == "completed"

    # A retry of a batch whose every line succeeded: refused by its handler, 409 over the Batch API.
    with pytest.raises(openai.ConflictError) as retried:
        client.post(f"/batches/{batch.id}/retry", cast_to=openai.types.Batch)
    nothing = f"batch {batch.id} has no failed, cancelled or expired lines to retry"
    assert retried.value.response.json()["error"]["message"] == nothing, retried.value.response.text

    # The cancel handler itself, asked directly: the API answers this one before it asks.
    base = f"http://127.0.0.1:{emulator.settings.http.port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    cancelled = httpx.post(f"{base}/functions/batches-cancel/invoke", params={"wait": 30}, json={"id": batch.id},
                           headers=headers, timeout=60)
    wrong_state = f"batch {batch.id} is completed: only a batch validating or in progress can be cancelled"
    assert cancelled.status_code == 409 and cancelled.json()["message"].endswith(f"refused it: {wrong_state}"), \
        cancelled.text
    shape = httpx.post(f"{base}/functions/batches-create/invoke", params={"wait": 30}, json={"id": 5},
                       headers=headers, timeout=60)
    assert shape.status_code == 409 and "refused it: the request body is not a NewBatch: " in shape.json()["message"]
    bad_body = shape.json()["message"].split("refused it: ", 1)[1]
    # The workflow's hold, asked with a body of the wrong shape: the same.
    hold = httpx.post(f"{base}/functions/workflow-suspend/invoke", params={"wait": 30}, json={"kind": "batch"},
                      headers=headers, timeout=60)
    assert hold.status_code == 409 and "refused it: the request body is not a Hold: " in hold.json()["message"], hold.text
    bad_hold = hold.json()["message"].split("refused it: ", 1)[1]

    statuses = emulator.store.query("SELECT name, status FROM tasks WHERE name IN (?, ?, ?, ?) ORDER BY id",
                                    ["fn:batches-retry", "fn:batches-cancel", "fn:batches-create", "fn:workflow-suspend"])
    # The first create made the batch; every ask after it was refused.
    assert statuses == [("fn:batches-create", "succeeded"), ("fn:batches-retry", "refused"),
                        ("fn:batches-cancel", "refused"), ("fn:batches-create", "refused"),
                        ("fn:workflow-suspend", "refused")], statuses
    assert emulator.store.queue.dead_letters() == []
    env = {**dropwire_env, "DROPWIRE_DATA_DIR": str(emulator.settings.data_dir), "COLUMNS": "80"}
    assert run_cli("dlq", "list", env=env).stdout.strip() == "no dead letters"
    shown = run_cli("queue", "invocations", "--outcome", "refused", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    for message in (nothing, wrong_state, bad_body, bad_hold):
        assert f"  {message}" in lines, shown.stdout
