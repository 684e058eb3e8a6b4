"""Notifications: the outbox row commits with its state change; delivery to a real SMTP server
(aiosmtpd) and a real HTTP server, .eml files, retries while SMTP is down, signed webhooks."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest
from aiosmtpd.controller import Controller

from dropwire.functions.evaluation.states import MACHINES
from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.context import StateChanges
from dropwire.local_emulator.notifier import SIGNATURE_HEADER, TIMESTAMP_HEADER, Notifier
from dropwire.local_emulator.settings import NotificationSettings, describe_settings, load_settings
from dropwire.storage.records import Done, Effects, NotificationRequest, TaskSpec, TransitionRequest
from dropwire.storage.store import Store
from tests.conftest import wait_for
from tests.platform.conftest import free_port


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "db.duckdb", MACHINES) as store:
        store.states.create("model", "m1", triggered_by="test")
        yield store


def notification(**fields) -> NotificationRequest:
    return NotificationRequest(**{"kind": "qc_passed", "subject": "QC passed for m1", "body": "All 12 checks passed.",
                                  "recipients": ["ops@example.com"], "entity_kind": "model", "entity_id": "m1", **fields})


def fast(**fields) -> NotificationSettings:
    return NotificationSettings(**{"poll_seconds": 0.05, "retry_base_seconds": 0.2, "retry_max_seconds": 0.4,
                                   "smtp_timeout_seconds": 2, **fields})


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def test_the_outbox_row_commits_with_its_change_or_not_at_all(store, tmp_path):
    illegal = Effects(transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="evaluation_done", triggered_by="t")],
                      notifications=[notification()])
    with pytest.raises(DropwireError):
        store.states.apply(illegal)
    assert store.outbox.notifications() == []
    for bad in ("not an address", "ops.example.com", "ops @example.com"):  # no @, or a space
        with pytest.raises(DropwireError, match=f"'{bad}' is not an e-mail address"):
            store.states.apply(Effects(notifications=[notification(recipients=[bad])]))
    for missing in ({"kind": ""}, {"subject": ""}):  # each alone is refused, naming both fields
        with pytest.raises(DropwireError, match="a notification needs a kind and a subject"):
            store.states.apply(Effects(notifications=[notification(**missing)]))
    assert store.outbox.notifications() == []

    legal = Effects(transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="dataset_uploaded", triggered_by="t")],
                    notifications=[notification()])
    store.states.apply(legal)
    (row,) = store.outbox.notifications()
    assert (row.kind, row.status, row.attempts, row.entity_id, row.recipients) == ("qc_passed", "pending", 0, "m1", ["ops@example.com"])

    # A handler's notify() travels in its effects and commits with the task's completion.
    report = tmp_path / "m1.html"
    report.write_text("<p>2 checks failed</p>")
    changes = StateChanges(reader=store, triggered_by="function:qc")
    changes.notify("qc_failed", "QC failed for m1", "2 checks failed", entity_kind="model", entity_id="m1",
                   attachments=[report.as_uri()], metadata={"failed": 2})
    task_id = store.queue.enqueue(TaskSpec(name="qc"))
    (claimed,) = store.queue.claim("w1", names=["qc"])
    assert store.queue.complete_many([Done(task_id=task_id, token=claimed.token, effects=changes.effects())]) == [None]
    newest = store.outbox.notifications(limit=1)[0]
    assert (newest.kind, newest.attachments, newest.metadata) == ("qc_failed", [report.as_uri()], {"failed": 2})

    # With no channel configured the notification is only written to the outbox.
    Notifier(store.outbox, fast(), tmp_path / "outbox").deliver_due()
    assert {n.status for n in store.outbox.notifications()} == {"recorded"}
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_email_waits_for_smtp_then_is_delivered_once_with_its_attachment(store, tmp_path):
    report = tmp_path / "report.csv"
    report.write_text("metric,value\nmae,0.42\n")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 5000)
    store.states.apply(Effects(notifications=[notification(kind="evaluation_completed", subject="Evaluation of m1 done",
                                                           attachments=[str(report), big.as_uri()])]))
    port = free_port()
    notifier = Notifier(store.outbox, fast(smtp_host="127.0.0.1", smtp_port=port, max_attachment_bytes=1000), tmp_path / "outbox")

    # SMTP is down: the row stays pending with the error, and the .eml is already written.
    before = time.time()
    assert notifier.deliver_due() == 1
    after = time.time()
    (row,) = store.outbox.notifications()
    assert row.status == "pending" and row.attempts == 1 and f"SMTP 127.0.0.1:{port}" in row.last_error
    # The first retry waits between half and all of retry_base_seconds (0.2 s).
    assert row.email_sent_at is None and before + 0.1 <= row.next_attempt_at <= after + 0.2
    eml = Path(row.eml_path)
    assert eml.exists() and b"Evaluation of m1 done" in eml.read_bytes()

    inbox = Inbox()
    server = Controller(inbox, hostname="127.0.0.1", port=port)
    server.start()
    notifier.start()
    try:
        wait_for(lambda: store.outbox.notifications()[0].status == "sent", timeout=15, what="the retry to deliver the e-mail")
        time.sleep(0.6)  # past another backoff and several polls: nothing is sent twice
    finally:
        notifier.stop()
        server.stop()
    assert len(inbox.messages) == 1
    (row,) = store.outbox.notifications()
    assert row.attempts == 2 and row.email_sent_at is not None
    message = inbox.messages[0]
    assert message["Subject"] == "Evaluation of m1 done" and message["X-Dropwire-Kind"] == "evaluation_completed"
    assert inbox.envelopes == [("dropwire@localhost", ["ops@example.com"])]
    body = message.get_body(("plain",)).get_content()
    assert "All 12 checks passed." in body and "attachment big.bin left out: larger than 1000 bytes" in body
    (attachment,) = message.iter_attachments()
    assert attachment.get_filename() == "report.csv" and attachment.get_content() == "metric,value\nmae,0.42\n"
    assert message["Message-ID"] == email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)["Message-ID"]


def test_a_notification_that_never_gets_through_ends_failed(store, tmp_path):
    store.states.apply(Effects(notifications=[notification()]))
    notifier = Notifier(store.outbox, fast(smtp_host="127.0.0.1", smtp_port=free_port(), max_attempts=2, retry_base_seconds=0.01,
                                           retry_max_seconds=0.01), tmp_path / "outbox")
    notifier.deliver_due()
    time.sleep(0.05)
    notifier.deliver_due()
    (row,) = store.outbox.notifications(status="failed")
    assert row.attempts == 2 and "SMTP" in row.last_error
    assert store.outbox.pending_notifications() == [] and notifier.deliver_due() == 0


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict, bytes]]] = []
    answers: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(type(self).answers.pop(0) if type(self).answers else 204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_retries_back_off_exponentially_and_wait_until_due(store, tmp_path):
    """Attempt n waits between half and all of base*2^(n-1), capped at retry_max_seconds; a row
    is not attempted again before then."""
    store.states.apply(Effects(notifications=[notification()]))
    notifier = Notifier(store.outbox, fast(smtp_host="127.0.0.1", smtp_port=free_port(), retry_base_seconds=40,
                                    retry_max_seconds=100), tmp_path / "outbox")
    bands = {1: (20, 40), 2: (40, 80), 3: (50, 100)}
    for attempt, (low, high) in bands.items():
        before = time.time()
        assert notifier.deliver_due() == 1
        after = time.time()
        (row,) = store.outbox.notifications()
        assert (row.status, row.attempts) == ("pending", attempt)
        assert before + low <= row.next_attempt_at <= after + high, (attempt, row.next_attempt_at - before)
        assert store.outbox.pending_notifications() == [] and notifier.deliver_due() == 0  # not due yet
        # Make it due now, as if the backoff had passed.
        store.outbox.mark_notification(row.id, status="pending", attempts=row.attempts, last_error=row.last_error,
                                next_attempt_at=time.time() - 1)


def _webhook_server(answers: list[int]) -> ThreadingHTTPServer:
    _Hook.received, _Hook.answers = [], answers
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_retry_repeats_only_the_channel_that_failed(store, tmp_path):
    """E-mail and webhook both configured: the webhook fails once (503) while the e-mail goes
    through; the retry posts the webhook again but does not send the e-mail a second time."""
    store.states.apply(Effects(notifications=[notification()]))
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    hook = _webhook_server([503])
    notifier = Notifier(store.outbox, fast(smtp_host="127.0.0.1", smtp_port=smtp.port,
                                    webhook_url=f"http://127.0.0.1:{hook.server_port}/hook", webhook_secret="s",
                                    retry_base_seconds=60, retry_max_seconds=60), tmp_path / "outbox")
    try:
        notifier.deliver_due()
        (row,) = store.outbox.notifications()
        assert (row.status, row.attempts, len(inbox.messages), len(_Hook.received)) == ("pending", 1, 1, 1)
        assert row.email_sent_at is not None and row.webhook_sent_at is None and "503" in row.last_error
        store.outbox.mark_notification(row.id, status="pending", attempts=1, last_error=row.last_error,
                                next_attempt_at=time.time() - 1)
        notifier.deliver_due()
    finally:
        smtp.stop()
        hook.shutdown()
        hook.server_close()
    (row,) = store.outbox.notifications()
    assert (row.status, row.attempts) == ("sent", 2) and row.webhook_sent_at is not None
    assert len(inbox.messages) == 1 and len(_Hook.received) == 2


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_retry_does_not_post_a_delivered_webhook_again(store, tmp_path):
    """The other way round: the webhook is accepted while SMTP is down; once SMTP is up the
    retry sends the e-mail and leaves the webhook alone."""
    store.states.apply(Effects(notifications=[notification()]))
    hook = _webhook_server([])
    port = free_port()
    notifier = Notifier(store.outbox, fast(smtp_host="127.0.0.1", smtp_port=port,
                                    webhook_url=f"http://127.0.0.1:{hook.server_port}/hook", webhook_secret="s",
                                    retry_base_seconds=60, retry_max_seconds=60), tmp_path / "outbox")
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    try:
        notifier.deliver_due()
        (row,) = store.outbox.notifications()
        assert (row.status, len(_Hook.received)) == ("pending", 1) and row.webhook_sent_at is not None
        store.outbox.mark_notification(row.id, status="pending", attempts=1, last_error=row.last_error,
                                next_attempt_at=time.time() - 1)
        smtp.start()
        notifier.deliver_due()
        smtp.stop()
    finally:
        hook.shutdown()
        hook.server_close()
    (row,) = store.outbox.notifications()
    assert (row.status, row.attempts) == ("sent", 2) and row.email_sent_at is not None
    assert len(inbox.messages) == 1 and len(_Hook.received) == 1




@pytest.mark.slow  # a real process or server: not in the fast tier
def test_webhooks_are_signed_and_retried_until_accepted(store, tmp_path):
    _Hook.received, _Hook.answers = [], [503]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    secret = "whsec-test"
    store.states.apply(Effects(notifications=[notification(kind="config_invalid", subject="Config of m1 is invalid",
                                                           metadata={"errors": ["horizon must be positive"]})]))
    notifier = Notifier(store.outbox, fast(webhook_url=f"http://127.0.0.1:{server.server_port}/hook", webhook_secret=secret,
                                           retry_base_seconds=0.01, retry_max_seconds=0.01), tmp_path / "outbox")
    try:
        notifier.deliver_due()
        assert "503" in store.outbox.notifications()[0].last_error and store.outbox.notifications()[0].status == "pending"
        time.sleep(0.05)
        notifier.deliver_due()
    finally:
        server.shutdown()
        server.server_close()
    (row,) = store.outbox.notifications()
    assert row.status == "sent" and row.webhook_sent_at is not None and row.email_sent_at is None
    assert len(_Hook.received) == 2
    headers, body = _Hook.received[-1]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    payload = json.loads(body)
    assert payload["kind"] == "config_invalid" and payload["metadata"] == {"errors": ["horizon must be positive"]}
    assert payload["sent_at"] == int(headers[TIMESTAMP_HEADER]) and payload["id"] == row.id


def test_settings_need_a_webhook_secret_and_mask_secrets():
    with pytest.raises(DropwireError, match=r"webhook_url needs notify\.webhook_secret"):
        load_settings(environ={"DROPWIRE_NOTIFY__WEBHOOK_URL": "http://127.0.0.1:1/hook"})
    settings = load_settings(environ={"DROPWIRE_NOTIFY__SMTP_PASSWORD": "hunter2", "DROPWIRE_NOTIFY__WEBHOOK_URL": "http://h/x",
                                      "DROPWIRE_NOTIFY__WEBHOOK_SECRET": "whsec", "DROPWIRE_NOTIFY__RECIPIENTS": '["a@b.c"]'})
    shown = describe_settings(settings)["notify"]
    assert shown["smtp_password"] == "****" and shown["webhook_secret"] == "****" and shown["recipients"] == ["a@b.c"]
    assert "hunter2" not in msgspec.json.encode(describe_settings(settings)).decode()


@pytest.mark.slow
def test_cli_lists_notifications_by_status(run_cli, data_dir):
    with Store.open(data_dir / "dropwire.duckdb", MACHINES) as store:
        store.states.apply(Effects(notifications=[notification(), notification(kind="qc_failed", subject="QC failed")]))
        store.outbox.mark_notification(1, status="failed", attempts=10, last_error="SMTP down")
    listed = run_cli("notifications", "list", "--status", "pending")
    assert listed.returncode == 0, listed.stderr
    assert "qc_failed" in listed.stdout and "qc_passed" not in listed.stdout
    failed = run_cli("notifications", "list", "--status", "failed")
    assert "qc_passed" in failed.stdout and "SMTP down" in failed.stdout
    bad = run_cli("notifications", "list", "--status", "lost")
    assert bad.returncode == 1 and "notification status must be one of" in bad.stderr
