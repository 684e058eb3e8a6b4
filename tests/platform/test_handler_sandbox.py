"""What a handler may do and what its failures cost: declared outputs only, each write noted
with hop + 1 before the object appears, and a handler that kills its process takes only its
sandbox (real handler processes, real files, real HTTP)."""

from __future__ import annotations

import time
from datetime import UTC

import pytest

from dropwire.functions.platform.objects import ObjectStore, OutputNotDeclared
from dropwire.functions.platform.registry import HttpEvent, Invocation, ObjectEvent
from dropwire.local_emulator.sandbox import Request, execute
from dropwire.storage.store import Store
from tests.conftest import wait_for
from tests.platform.sample_functions import functions
from tests.platform.test_emulator import invocations


def upload_event(key: str) -> ObjectEvent:
    return ObjectEvent(bucket="local", key=key, raw_key=key, size=1, etag="e1", version_id="v1", sequencer="01",
                       event_name="ObjectCreated:Put", event_time="", source="folder")


def test_a_write_is_noted_with_hop_plus_one_before_the_object_appears(tmp_path):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    objects = ObjectStore({"local": str(bucket)})
    notes: list[tuple] = []

    def note(bucket_name: str, key: str, hop: int, function: str, task_id: int) -> None:
        notes.append((bucket_name, key, hop, function, task_id, (bucket / key).exists()))

    request = Request(invocation=Invocation(function="relay", source="upload", event=upload_event("relay-in/a.csv"), hop=3),
                      task_id=7, attempt=1, max_attempts=3, deadline=time.time() + 30)
    with Store.open(tmp_path / "db.duckdb") as store:
        outcome = execute(functions.get("relay"), request, objects, store, note, "http://127.0.0.1:9", "sqlite:///x.db", None,
                          store.records, store.quota, {})
    assert outcome.ok, outcome.error
    # Noted as hop 4 while the object did not exist yet; it exists now.
    assert notes == [("local", "relay-out/relay-in/a.csv", 4, "relay", 7, False)]
    assert (bucket / "relay-out" / "relay-in" / "a.csv").read_bytes() == b"relayed"


def test_a_write_outside_the_declared_outputs_is_refused_and_not_written(tmp_path):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    notes: list[tuple] = []
    event = HttpEvent(body={"key": "elsewhere/nope.txt"}, received_at="")
    request = Request(invocation=Invocation(function="escape", source="http", event=event),
                      task_id=1, attempt=1, max_attempts=1, deadline=time.time() + 30)
    with Store.open(tmp_path / "db.duckdb") as store:
        outcome = execute(functions.get("escape"), request, ObjectStore({"local": str(bucket)}), store,
                          lambda *noted: notes.append(noted), "http://127.0.0.1:9", "sqlite:///x.db", None, store.records,
                          store.quota, {})
    assert not outcome.ok and OutputNotDeclared.__name__ in outcome.traceback
    assert outcome.error == ("function 'escape' may not write local/elsewhere/nope.txt: it is outside the output "
                             "prefixes the function declared")
    # The declared write went through and was noted; the refused one was neither noted nor written.
    assert [noted[:3] for noted in notes] == [("local", "allowed/ok.txt", 1)]
    assert (bucket / "allowed" / "ok.txt").exists() and not (bucket / "elsewhere").exists()


@pytest.mark.slow
def test_declared_outputs_hops_and_a_crashing_handler_in_the_emulator(start_emulator):
    emulator, http = start_emulator()
    bucket = emulator.settings.bucket_path

    # Writing outside the declared outputs fails the invocation; nothing lands there.
    # (a waiting invoke answers a failed function with the one error shape, its last error the message)
    refused = http.post("/functions/escape/invoke", params={"wait": 30}, json={"key": "elsewhere/nope.txt"})
    assert refused.status_code == 409 and refused.json()["error"] == "refused_by_handler", refused.text
    assert "may not write local/elsewhere/nope.txt: it is outside the output prefixes" in refused.json()["message"]
    assert (bucket / "allowed" / "ok.txt").exists() and not (bucket / "elsewhere").exists()

    # An outside upload is hop 0; the object its handler writes is hop 1, noted before it
    # appeared, so the event it causes carries hop 1.
    (bucket / "relay-in").mkdir()
    (bucket / "relay-in" / "a.csv").write_text("a\n")
    wait_for(lambda: invocations(emulator, "relayed"), what="the relayed output to fire its function")
    hops = emulator.store.query("SELECT json_extract_string(args, '$.function'), json_extract(args, '$.hop')::INT "
                                "FROM tasks WHERE name IN ('fn:relay', 'fn:relayed') ORDER BY id")
    assert hops == [("relay", 0), ("relayed", 1)]

    # A handler that kills its own process costs its attempts, nothing else: the next
    # invocation runs in a fresh sandbox and the emulator keeps serving.
    crashed = http.post("/functions/crash/invoke", params={"wait": 60}, json={})
    assert crashed.status_code == 409 and "failed after 2 attempt(s)" in crashed.json()["message"], crashed.text
    assert "died (exit code 70)" in crashed.json()["message"]
    assert [outcome for outcome, _, _ in invocations(emulator, "crash")] == ["failed", "failed"]
    after = http.post("/functions/add/invoke", params={"wait": 30}, json={"numbers": [1, 2]}).json()
    assert after["status"] == "succeeded" and after["result"]["sum"] == 3
    assert http.get("/health").json()["status"] == "ok"


def test_object_store_reports_modification_times_and_passes_storage_options(tmp_path):
    from datetime import datetime

    from dropwire.functions.platform.objects import url_to_fs

    objects = ObjectStore({"local": str(tmp_path)})
    assert objects.modified("local", "nothing/here.csv") is None
    objects.write_bytes("local", "some/where.csv", b"x")
    stamp = objects.modified("local", "some/where.csv")
    assert stamp.tzinfo is not None
    assert stamp == datetime.fromtimestamp((tmp_path / "some" / "where.csv").stat().st_mtime, UTC)
    objects.write_bytes("local", "some/else.csv", b"y")  # a second object in a folder that exists
    assert sorted(p.name for p in (tmp_path / "some").iterdir()) == ["else.csv", "where.csv"]
    # Options configured for a protocol reach its filesystem (e.g. an S3 endpoint for s3://).
    fs, _ = url_to_fs(f"file://{tmp_path}", {"file": {"auto_mkdir": True}})
    assert fs.auto_mkdir is True and url_to_fs(str(tmp_path))[0].auto_mkdir is False
    endpoint = {"s3": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}}  # never dialled: nothing is read
    fs, path = url_to_fs("s3://team-data/in/x.csv", endpoint)
    assert "s3" in fs.protocol and fs.client_kwargs == endpoint["s3"]["client_kwargs"] and path == "team-data/in/x.csv"
