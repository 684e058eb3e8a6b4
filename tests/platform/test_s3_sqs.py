"""S3 events through SQS against a real endpoint over HTTP: moto's server, started here on a
free loopback port, sending real bucket notifications to a real queue."""

from __future__ import annotations

import json

import pytest

from local_emulator.emulator import Emulator
from local_emulator.sources.s3 import example_notification
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
