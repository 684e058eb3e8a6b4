"""S3 events through SQS against a real endpoint over HTTP: moto's server, started here on a
free loopback port, sending real bucket notifications to a real queue."""

from __future__ import annotations

import json

import pytest

from dropwire.local_emulator.emulator import Emulator
from dropwire.local_emulator.sources.s3 import example_notification
from tests.conftest import wait_for
from tests.platform.conftest import emulator_settings
from tests.platform.moto_server import CREDENTIALS, moto_server, notifying_bucket

pytestmark = pytest.mark.slow


@pytest.fixture
def moto(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with moto_server() as endpoint:
        yield endpoint


def test_s3_uploads_reach_handlers_through_sqs(moto, tmp_path):
    s3, sqs, queue_url = notifying_bucket(moto, "uploads")

    settings = emulator_settings(tmp_path / "data", DROPWIRE_EVENTS__S3_ENDPOINT_URL=moto,
                                 DROPWIRE_EVENTS__S3_BUCKETS='["uploads"]', DROPWIRE_EVENTS__SQS_QUEUE_URL=queue_url)
    with Emulator(settings, serve_http=False) as emulator:
        s3.put_object(Bucket="uploads", Key="in/red flower+1.csv", Body=b"hello world")
        s3.put_object(Bucket="uploads", Key="elsewhere/ignored.csv", Body=b"nobody watches this prefix")
        # Not an S3 event: logged and deleted, and the consumer goes on.
        sqs.send_message(QueueUrl=queue_url, MessageBody="this is not an S3 event")
        wait_for(lambda: emulator.store.query(
            "SELECT count(*) FROM invocations WHERE function = 's3_measure' AND outcome = 'succeeded'")[0][0] == 1,
                 timeout=60, what="the S3 upload to be handled")
        report = s3.get_object(Bucket="uploads", Key="out/in/red flower+1.csv.txt")["Body"].read()
        assert report == b"11\n"

        # The same object announced again, in one message with two records: no second run.
        etag = s3.head_object(Bucket="uploads", Key="in/red flower+1.csv")["ETag"].strip('"')
        twice = example_notification("uploads", "in/red flower+1.csv", 11, etag)
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": twice["Records"] * 2}))
        wait_for(lambda: int(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
                             ["ApproximateNumberOfMessages"]) == 0, timeout=30, what="the queue to drain")
        wait_for(lambda: emulator.store.query("SELECT count(*) FROM object_receipts")[0][0] == 1, what="one receipt")
        assert emulator.store.query("SELECT count(*) FROM invocations WHERE function = 's3_measure'")[0][0] == 1


def test_the_evaluation_workflow_on_an_s3_bucket(moto, tmp_path):
    """The product's functions know their bucket as "local"; events.bucket_s3 backs it with an
    S3 bucket: uploads to S3 fire them, and their outputs land in S3."""
    from tests.evaluation.conftest import FIELDS, GOOD_ROWS, HEADER

    s3, _, queue_url = notifying_bucket(moto, "team-data")
    settings = emulator_settings(tmp_path / "data", DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                                 DROPWIRE_EVENTS__S3_ENDPOINT_URL=moto, DROPWIRE_EVENTS__BUCKET_S3="team-data",
                                 DROPWIRE_EVENTS__SQS_QUEUE_URL=queue_url)
    assert settings.object_roots()["local"] == "s3://team-data"

    def state(kind: str, entity_id: str) -> str | None:
        rows = emulator.store.query("SELECT state FROM entity_states WHERE kind = ? AND entity_id = ?", [kind, entity_id])
        return rows[0][0] if rows else None

    def reach(kind: str, entity_id: str, wanted: str) -> None:
        wait_for(lambda: state(kind, entity_id) == wanted, timeout=60, what=f"{entity_id} to reach {wanted}")

    with Emulator(settings, serve_http=False) as emulator:
        s3.put_object(Bucket="team-data", Key="use-cases/invoices/use-case.json",
                      Body=json.dumps({"name": "Invoices", "team_email": "team@example.com"}).encode())
        reach("use_case", "invoices", "AWAITING_CONFIG")
        s3.put_object(Bucket="team-data", Key="use-cases/invoices/config.json",
                      Body=json.dumps({"use_case": "invoices", "fields": FIELDS}).encode())
        reach("use_case", "invoices", "CONFIG_VALIDATED")
        s3.put_object(Bucket="team-data", Key="use-cases/invoices/models/alpha/register.json",
                      Body=json.dumps({"name": "alpha", "version": "1"}).encode())
        reach("model", "invoices/alpha", "REGISTERED")
        s3.put_object(Bucket="team-data", Key="use-cases/invoices/models/alpha/dataset.csv",
                      Body=("\n".join(",".join(row) for row in [HEADER, *GOOD_ROWS]) + "\n").encode())
        reach("model", "invoices/alpha", "EVALUATION_COMPLETED")
        done = emulator.store.states.snapshot("model", "invoices/alpha").history[-1].metadata
        assert done["report"] == "s3://team-data/evaluation-results/invoices/alpha/1/report.xlsx"
        assert done["file_uploaded"] == "local/use-cases/invoices/models/alpha/dataset.csv"
        report = s3.get_object(Bucket="team-data", Key="evaluation-results/invoices/alpha/1/report.xlsx")["Body"].read()
        assert report[:2] == b"PK"
        assert s3.head_object(Bucket="team-data", Key="evaluation-templates/invoices/config-template.yaml")


class DeleteLog:
    """The real SQS client, noting for each delete how many receipts the store held by then."""

    def __init__(self, client, store) -> None:
        self._client, self._store = client, store
        self.deletes: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def delete_message(self, **kwargs):
        self.deletes.append(self._store.query("SELECT count(*) FROM object_receipts")[0][0])
        return self._client.delete_message(**kwargs)


def test_an_sqs_message_is_deleted_only_after_its_invocations_are_queued(moto, tmp_path):
    import boto3

    from dropwire.local_emulator.router import EventRouter
    from dropwire.local_emulator.sources.s3 import SqsSource
    from dropwire.storage.store import Store
    from tests.platform.sample_functions import functions

    sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-east-1")
    # Visible again at once when not deleted, so a kept message is received over and over.
    queue_url = sqs.create_queue(QueueName="events", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    body = json.dumps(example_notification("local", "incoming/a.csv", 3, "etag-a"))
    sqs.send_message(QueueUrl=queue_url, MessageBody=body)

    # The store cannot queue anything (it is closed): the message is received, not deleted.
    closed = Store.open(tmp_path / "closed.duckdb")
    closed.close()
    attempts: list[int] = []
    router = EventRouter(functions, closed.receipts, closed.queue, hop_limit=16)
    failing = DeleteLog(sqs, closed)
    source = SqsSource(failing, queue_url, lambda events: (attempts.append(len(events)), router.route(events)), wait_seconds=1)
    source.start()
    try:
        wait_for(lambda: len(attempts) >= 2, what="the message to be received again after a failed routing")
    finally:
        source.stop()
    assert failing.deletes == []

    # A working store: the invocation is queued, then (only then) the message is deleted.
    with Store.open(tmp_path / "db.duckdb") as store:
        router = EventRouter(functions, store.receipts, store.queue, hop_limit=16)
        working = DeleteLog(sqs, store)
        source = SqsSource(working, queue_url, router.route, wait_seconds=1).start()
        try:
            wait_for(lambda: working.deletes, what="the message to be deleted")
        finally:
            source.stop()
        assert working.deletes == [1]
        assert store.query("SELECT name, json_extract_string(args, '$.event.key') FROM tasks") == [("fn:measure", "incoming/a.csv")]
    assert "Messages" not in sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)


def test_a_message_with_an_event_that_could_not_be_admitted_stays_queued_and_the_others_go(moto, tmp_path):
    import boto3

    from dropwire.local_emulator.router import EventRouter
    from dropwire.local_emulator.sources.s3 import SqsSource
    from dropwire.storage.store import Store
    from tests.platform.sample_functions import functions

    sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName="events", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    for bucket, key in (("local", "incoming/a.csv"), ("uploads", "in/b.csv"), ("local", "incoming/c.csv")):
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(example_notification(bucket, key, 3, f"etag-{key}")))
    # The store knows no task for s3_measure (its worker is not deployed): b's event is refused, a's and c's are not.
    with Store.open(tmp_path / "db.duckdb", known_tasks=["fn:measure"]) as store:
        router = EventRouter(functions, store.receipts, store.queue, hop_limit=16)
        routed: list[list[str]] = []
        source = SqsSource(DeleteLog(sqs, store), queue_url,
                           lambda events: (routed.append([e.key for e in events]), router.route(events))[1],
                           wait_seconds=1).start()
        try:
            wait_for(lambda: sum("in/b.csv" in keys for keys in routed) >= 3 and store.query(
                "SELECT count(*) FROM object_receipts")[0][0] == 2, what="b's message to come back after failing")
        finally:
            source.stop()
        assert sorted(k for (k,) in store.query('SELECT "key" FROM object_receipts')) == ["incoming/a.csv", "incoming/c.csv"]
        (health,) = router.health.sources()
        assert health.source == "sqs" and health.failures >= 3
        (failing,) = health.failing
        assert (failing.bucket, failing.key) == ("uploads", "in/b.csv") and "unknown task 'fn:s3_measure'" in failing.error
    # Only b's message is left: a's and c's were deleted once their invocations were queued.
    left = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert [json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in left] == ["in/b.csv"]
