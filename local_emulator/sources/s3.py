"""S3 event notifications: parsing (every Record, URL-decoded keys, test events ignored,
unknown fields tolerated, SNS envelopes unwrapped), a realistic event for tests and users,
and an SQS long-poll consumer that deletes a message only after its events are queued."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote_plus, unquote_plus

import msgspec

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.registry import ObjectEvent
from dropwire.local_emulator.router import NotAdmitted

log = logging.getLogger("dropwire.sources.s3")


class MalformedEvent(DropwireError):
    code = "malformed_event"


class _Bucket(msgspec.Struct):
    name: str


class _Object(msgspec.Struct, rename={"etag": "eTag", "version_id": "versionId"}):
    key: str
    size: int = 0
    etag: str = ""
    version_id: str | None = None
    sequencer: str | None = None


class _S3(msgspec.Struct):
    bucket: _Bucket
    object: _Object


class _Record(msgspec.Struct, rename={"event_name": "eventName", "event_time": "eventTime"}):
    event_name: str
    s3: _S3
    event_time: str = ""


class _Notification(msgspec.Struct):
    Records: list[_Record] | None = None
    Event: str | None = None  # "s3:TestEvent" when S3 checks the configuration
    Type: str | None = None  # "Notification" when the message came through SNS
    Message: str | None = None


_decode = msgspec.json.Decoder(_Notification).decode


def parse_notification(body: str | bytes, source: str = "s3") -> list[ObjectEvent]:
    """Every object event in an S3 notification; [] for a test event; MalformedEvent with
    the reason for anything else."""
    try:
        notification = _decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedEvent(f"not an S3 event notification: {exc}") from None
    if notification.Type == "Notification" and notification.Message is not None:
        return parse_notification(notification.Message, source)
    if notification.Event == "s3:TestEvent":
        return []
    if not notification.Records:
        raise MalformedEvent("not an S3 event notification: it has no Records")
    return [
        ObjectEvent(bucket=r.s3.bucket.name, key=unquote_plus(r.s3.object.key), raw_key=r.s3.object.key,
                    size=r.s3.object.size, etag=r.s3.object.etag.strip('"'), version_id=r.s3.object.version_id,
                    sequencer=r.s3.object.sequencer, event_name=r.event_name.removeprefix("s3:"),
                    event_time=r.event_time, source=source)
        for r in notification.Records
    ]


def example_notification(bucket: str, key: str, size: int, etag: str, event_name: str = "ObjectCreated:Put",
                          version_id: str | None = None, sequencer: str | None = None) -> dict:
    """A notification shaped like the ones S3 sends (URL-encoded key, sequencer)."""
    now = datetime.now(UTC)
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "eventName": event_name, "userIdentity": {"principalId": "dropwire"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"}, "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "dropwire",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "dropwire"}, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag,
                          **({"versionId": version_id} if version_id else {}),
                          "sequencer": sequencer or f"{time.time_ns():X}"}},
    }]}


class SqsSource:
    """Long-polls an SQS queue of S3 notifications. A message is deleted only after all its
    events were routed (their invocations durably queued); one with an event that could not
    be admitted stays queued (it comes back once its visibility timeout ends, and again until
    SQS moves it to the queue's dead-letter queue, if one is set); one that is not an S3 event
    is logged and deleted so it cannot come back forever."""

    def __init__(self, client, queue_url: str, route: Callable[[list[ObjectEvent]], object], wait_seconds: int = 1,
                 bucket_names: dict[str, str] | None = None) -> None:
        self.client = client
        self.queue_url = queue_url
        self.route = route
        self.wait_seconds = wait_seconds
        #: S3 bucket -> the name functions know it by (settings.events.bucket_s3)
        self.bucket_names = bucket_names or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropwire-sqs", daemon=True)

    def start(self) -> SqsSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.client.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                                    WaitTimeSeconds=self.wait_seconds)
            except Exception as exc:  # the endpoint is down: say so and try again
                log.error("cannot receive from %s: %s", self.queue_url, exc)
                self._stop.wait(1.0)
                continue
            self._handle(reply.get("Messages", []))

    def _handle(self, messages: list[dict]) -> None:
        """Route the events of all received messages together, then delete the messages whose
        events were all admitted; one with an event that was not stays queued and comes back."""
        events, of_message = [], []
        for message in messages:
            try:
                found = [msgspec.structs.replace(e, bucket=self.bucket_names.get(e.bucket, e.bucket))
                         for e in parse_notification(message["Body"], source="sqs")]
            except MalformedEvent as exc:
                log.error("deleting SQS message %s: %s", message.get("MessageId"), exc.message)
                found = []
            events.extend(found)
            of_message.append(found)
        kept: list[dict] = []
        try:
            if events:
                self.route(events)
        except NotAdmitted as exc:
            failed = {id(event) for event in exc.events}
            kept = [m for m, found in zip(messages, of_message, strict=False) if any(id(e) in failed for e in found)]
            log.error("%d SQS message(s) stay queued (they will be received again): %s", len(kept), exc.message)
        except DropwireError as exc:
            log.error("%d SQS message(s) stay queued (they will be retried): %s", len(messages), exc.message)
            return
        for message in messages:
            if message not in kept:
                self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
