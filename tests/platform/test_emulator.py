"""The platform end to end: real folder events, real HTTP, real handler processes."""

from __future__ import annotations

import time

import pytest

from dropwire.local_emulator.emulator import ChaosSettings
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


def invocations(emulator, function: str) -> list[tuple]:
    return emulator.store.query("SELECT outcome, error, source FROM invocations WHERE function = ? ORDER BY started_at", [function])


def assert_error_shape(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details", "timestamp"} and body["error"] == code
    return body


def test_uploads_http_timeouts_failures_and_the_error_shape(start_emulator):
    emulator, http = start_emulator()
    bucket = emulator.settings.bucket_path

    # A dropped file fires its function; the function's output fires nothing.
    (bucket / "incoming").mkdir(parents=True)
    (bucket / "incoming" / "red flower+1.csv").write_text("a,b\n1,2\n")
    wait_for(lambda: invocations(emulator, "measure") == [("succeeded", None, "upload")], what="the upload to be handled")
    assert (bucket / "measured" / "incoming" / "red flower+1.csv.txt").read_text() == "8\n"

    # An upload through HTTP takes the same path: written to the bucket, then the event fires.
    uploaded = http.put("/buckets/local/objects/incoming/via http.csv", content=b"0123456789")
    assert uploaded.status_code == 201 and uploaded.json()["size"] == 10
    wait_for(lambda: len(invocations(emulator, "measure")) == 2, what="the HTTP upload to be handled")
    assert (bucket / "measured" / "incoming" / "via http.csv.txt").read_text() == "10\n"

    # HTTP-triggered function, waiting for the result.
    done = http.post("/functions/add/invoke", params={"wait": 20}, json={"numbers": [1, 2, 39]})
    assert done.status_code == 202 and done.json()["status"] == "succeeded" and done.json()["result"]["sum"] == 42

    # A handler past its timeout is stopped, counted as a failed attempt, then dead-lettered.
    task_id = http.post("/functions/sleepy/invoke", json={}).json()["task_id"]
    wait_for(lambda: http.get(f"/tasks/{task_id}").json()["status"] == "dead", timeout=60, what="the sleepy task to die")
    assert [o for o, _, _ in invocations(emulator, "sleepy")] == ["timed_out", "timed_out"]
    assert "ran past its timeout" in http.get(f"/dead-letters/{task_id}").json()["last_error"]

    # A handler that raises is retried, then its last error and its event land in the dead letters.
    (bucket / "broken").mkdir()
    (bucket / "broken" / "x.csv").write_text("x")
    wait_for(lambda: any(d["name"] == "fn:broken" for d in http.get("/dead-letters").json()), what="the broken dead letter")
    letter = next(d for d in http.get("/dead-letters").json() if d["name"] == "fn:broken")
    assert letter["attempts"] == 2 and letter["last_error"] == "ValueError: cannot handle broken/x.csv"
    assert letter["args"]["event"]["key"] == "broken/x.csv"
    replayed = http.post(f"/dead-letters/{letter['task_id']}/replay")
    assert replayed.status_code == 201 and http.get(replayed.json()["status_url"]).status_code == 200

    # Bad input gets the one error shape.
    assert_error_shape(http.put("/buckets/local/objects/a/%2E%2E/%2E%2E/etc/passwd", content=b"x"), 400, "invalid_key")
    assert "no function named" in assert_error_shape(http.post("/functions/nope/invoke", json={}), 404, "not_found")["message"]
    assert_error_shape(http.post("/functions/measure/invoke", json={}), 404, "not_found")
    assert_error_shape(http.get("/tasks/999999"), 404, "not_found")
    assert_error_shape(http.get("/no/such/route"), 404, "not_found")

    # Operations and docs.
    stats = http.get("/tasks/stats").json()
    assert stats["by_name"]["fn:measure"] == {"succeeded": 2}
    rows = http.get("/invocations", params={"function": "measure"}).json()
    assert [r["outcome"] for r in rows] == ["succeeded", "succeeded"]
    assert "/functions/{name}/invoke" in http.get("/schema/openapi.json").json()["paths"]
    assert http.get("/health").json()["status"] == "ok"


def test_bearer_tokens_guard_everything_but_health(start_emulator):
    _emulator, http = start_emulator(DROPWIRE_HTTP__API_TOKENS='["s3cret"]')
    assert http.get("/health").status_code == 200
    missing = assert_error_shape(http.get("/tasks/stats"), 401, "not_authorized")
    assert "missing 'Authorization: Bearer <token>'" in missing["message"]
    assert_error_shape(http.get("/tasks/stats", headers={"Authorization": "Bearer wrong"}), 401, "not_authorized")
    assert http.get("/tasks/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_duplicated_delayed_and_reordered_events_give_one_invocation_each(start_emulator):
    emulator, _http = start_emulator(chaos=ChaosSettings(duplicate=1.0, reorder=0.5, max_delay_seconds=0.2, seed=7))
    incoming = emulator.settings.bucket_path / "incoming"
    incoming.mkdir(parents=True)
    for i in range(15):
        (incoming / f"file-{i}.csv").write_text("x" * i)
    wait_for(lambda: len(invocations(emulator, "measure")) >= 15, timeout=60, what="15 invocations")
    wait_for(lambda: emulator.store.query("SELECT count(*) FROM tasks WHERE status <> 'succeeded'")[0][0] == 0,
             what="every task to finish")
    rows = emulator.store.query("SELECT count(*), count(DISTINCT \"key\") FROM object_receipts WHERE function = 'measure'")
    assert rows == [(15, 15)]
    assert len(invocations(emulator, "measure")) == 15


def test_versions_of_one_key_duplicated_and_reordered_run_at_most_once_each_and_never_out_of_order(start_emulator):
    # Every event is delivered twice, each copy held back between 1 and 2 s: versions written
    # 0.15 s apart overtake each other at random.
    emulator, _http = start_emulator(chaos=ChaosSettings(duplicate=1.0, reorder=1.0, max_delay_seconds=1.0, seed=11))
    incoming = emulator.settings.bucket_path / "incoming"
    incoming.mkdir(parents=True)
    for version in range(1, 9):
        (incoming / "same.csv").write_text("x" * version)
        # Longer than the folder's settle time, so each write is an event of its own (on a
        # stalled box two writes may merge into one version: the rules below still hold).
        time.sleep(0.15)
    final = incoming / "same.csv"
    final_version = f"{final.stat().st_mtime_ns}-{final.stat().st_size}"
    wait_for(lambda: emulator.store.query("SELECT count(*) FROM object_receipts WHERE \"key\" = 'incoming/same.csv' "
                                          "AND version = ?", [final_version])[0][0] == 1, timeout=30, what="the last version")
    wait_for(lambda: emulator.store.query("SELECT count(*) FROM tasks WHERE status <> 'succeeded'")[0][0] == 0,
             what="every task to finish")
    admitted = emulator.store.query("SELECT version, sequencer FROM object_receipts WHERE \"key\" = 'incoming/same.csv' "
                                    "ORDER BY task_id")
    sequencers = [int(sequencer, 16) for _, sequencer in admitted]
    assert sequencers == sorted(set(sequencers)), "a version ran twice, or an older one after a newer one"
    assert 1 <= len(admitted) <= 8 and admitted[-1][0] == final_version
    runs = emulator.store.query("SELECT count(*) FROM invocations WHERE function = 'measure' "
                                "AND json_extract_string(event, '$.key') = 'incoming/same.csv'")[0][0]
    assert runs == len(admitted)
    assert (emulator.settings.bucket_path / "measured" / "incoming" / "same.csv.txt").read_text() == "8\n"
