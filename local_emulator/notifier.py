"""Delivers the notifications the store keeps in its outbox table.

Each pending notification is first written as an .eml file under the outbox directory (always,
once per id; later attempts send those same bytes, so a retried e-mail is the same e-mail),
then e-mailed over SMTP when configured and posted as a signed JSON webhook when configured.
Each channel's success is recorded on its own, so a retry repeats only what failed. Failures
keep the row pending with its error and try again after an exponential backoff; once
`max_attempts` are spent the row is `failed`, visible in `dropwire notifications list`.

The retry loop is a thread here rather than a platform schedule: schedules fire handlers in
sandbox processes, which may not write the store directly, while delivery must record each
channel's outcome through the store's writer as it happens.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import logging
import mimetypes
import os
import smtplib
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path, PurePosixPath
from typing import IO, cast

import fsspec
import httpx
import msgspec
from fsspec.utils import get_protocol

from dropwire.functions.kit.backoff import equal_jitter
from dropwire.functions.kit.redact import mask_urls
from dropwire.local_emulator.settings import NotificationSettings
from dropwire.storage.outbox import Outbox
from dropwire.storage.records import NotificationRecord

log = logging.getLogger("dropwire.notifier")

SIGNATURE_HEADER = "X-Dropwire-Signature"
TIMESTAMP_HEADER = "X-Dropwire-Timestamp"


class WebhookPayload(msgspec.Struct, kw_only=True, frozen=True):
    """The JSON body of a webhook; `sent_at` (epoch seconds) is signed with the rest, so a
    receiver can refuse old replays."""

    id: int
    kind: str
    subject: str
    body: str
    recipients: list[str]
    attachments: list[str]
    entity_kind: str | None
    entity_id: str | None
    metadata: dict
    created_at: float
    sent_at: int


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: sha256=<hex HMAC-SHA256 of the raw body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, notifications: Outbox, settings: NotificationSettings, outbox: Path,
                 storage_options: dict[str, dict] | None = None) -> None:
        self.notifications = notifications
        self.settings = settings
        self.outbox = outbox
        self.storage_options = storage_options or {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=settings.webhook_timeout_seconds)

    def start(self) -> Notifier:
        self._thread = threading.Thread(target=self._run, name="dropwire-notifier", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # the store closing or a bug: log it and keep the loop alive
                log.exception("delivering notifications failed; trying again in %ss", self.settings.poll_seconds)
            self._stop.wait(self.settings.poll_seconds)

    def deliver_due(self) -> int:
        """One pass: attempt every notification that is due. Returns how many were attempted."""
        due = self.notifications.pending_notifications(limit=100)
        for notification in due:
            if self._stop.is_set():
                break
            self._deliver(notification)
        return len(due)

    # ------------------------------------------------------------------ one notification

    def _deliver(self, n: NotificationRecord) -> None:
        settings = self.settings
        errors: list[str] = []
        eml_path, email_sent, webhook_sent = None, False, False
        recipients = n.recipients or settings.recipients
        wants_email = bool(settings.smtp_host and recipients)
        try:
            message, eml_path = self._message(n, recipients)
        except Exception as exc:
            errors.append(f"building the e-mail failed: {type(exc).__name__}: {exc}")
        else:
            if wants_email and n.email_sent_at is None:
                try:
                    self._send_email(message, recipients)
                    email_sent = True
                except (smtplib.SMTPException, OSError) as exc:
                    errors.append(f"SMTP {settings.smtp_host}:{settings.smtp_port}: {type(exc).__name__}: {exc}")
        if settings.webhook_url and n.webhook_sent_at is None:
            try:
                self._post_webhook(n)
                webhook_sent = True
            except httpx.HTTPError as exc:
                errors.append(f"webhook {settings.webhook_url}: {type(exc).__name__}: {exc}")
        if not errors:
            status = "sent" if wants_email or settings.webhook_url else "recorded"
            self.notifications.mark_notification(n.id, status=status, attempts=n.attempts + 1, eml_path=eml_path,
                                                 email_sent=email_sent, webhook_sent=webhook_sent)
            return
        attempts = n.attempts + 1
        error = mask_urls("; ".join(errors))  # kept in the table and logged: no credentials of the webhook's URL
        spent = attempts >= settings.max_attempts
        self.notifications.mark_notification(n.id, status="failed" if spent else "pending", attempts=attempts, last_error=error,
                                             next_attempt_at=time.time() + self._backoff(attempts), eml_path=eml_path,
                                             email_sent=email_sent, webhook_sent=webhook_sent)
        if spent:
            log.error("notification %s (%s) failed after %d attempt(s): %s", n.id, n.kind, attempts, error)
        else:
            log.warning("notification %s (%s) attempt %d failed, will retry: %s", n.id, n.kind, attempts, error)

    def _backoff(self, attempts: int) -> float:
        return equal_jitter(attempts, self.settings.retry_base_seconds, self.settings.retry_max_seconds)

    # ------------------------------------------------------------------ the .eml file

    def _message(self, n: NotificationRecord, recipients: list[str]) -> tuple[EmailMessage, str]:
        """The notification's e-mail: read back from its .eml file if written, else built and written."""
        path = self.outbox / f"notification-{n.id:010d}.eml"
        if path.exists():
            return email.message_from_bytes(path.read_bytes(), policy=email.policy.default), str(path)
        message = self._build(n, recipients)
        self.outbox.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".eml.part")
        partial.write_bytes(message.as_bytes())
        os.replace(partial, path)  # a crash never leaves a half-written .eml under the final name
        return message, str(path)

    def _build(self, n: NotificationRecord, recipients: list[str]) -> EmailMessage:
        settings = self.settings
        message = EmailMessage()
        message["Subject"] = n.subject
        message["From"] = settings.from_address
        if recipients:
            message["To"] = ", ".join(recipients)
        message["Date"] = format_datetime(datetime.fromtimestamp(n.created_at, UTC))
        # The same id on every retry, so a receiver can drop a duplicate.
        message["Message-ID"] = f"<dropwire-notification-{n.id}-{int(n.created_at)}@{settings.from_address.rpartition('@')[2]}>"
        message["X-Dropwire-Kind"] = n.kind
        if n.entity_kind and n.entity_id:
            message["X-Dropwire-Entity"] = f"{n.entity_kind}/{n.entity_id}"
        attached, notes = [], []
        for url in n.attachments:
            data = self._read_capped(url)
            name = PurePosixPath(url.rstrip("/")).name or "attachment"
            if data is None:
                notes.append(f"[attachment {name} left out: larger than {settings.max_attachment_bytes} bytes; it is at {url}]")
            else:
                attached.append((name, data))
        message.set_content("\n\n".join([n.body, *notes]) if notes else n.body)
        for name, data in attached:
            maintype, _, subtype = (mimetypes.guess_type(name)[0] or "application/octet-stream").partition("/")
            message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        return message

    def _read_capped(self, url: str) -> bytes | None:
        """The attachment's bytes through fsspec, or None when it is over the size cap."""
        cap = self.settings.max_attachment_bytes
        with fsspec.open(url, "rb", **self.storage_options.get(get_protocol(url), {})) as stream:
            data = cast(IO[bytes], stream).read(cap + 1)  # fsspec.open is unannotated
        return None if len(data) > cap else data

    # ------------------------------------------------------------------ channels

    def _send_email(self, message: EmailMessage, recipients: list[str]) -> None:
        settings = self.settings
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password)
            smtp.send_message(message, from_addr=settings.from_address, to_addrs=recipients)

    def _post_webhook(self, n: NotificationRecord) -> None:
        sent_at = int(time.time())
        body = msgspec.json.encode(WebhookPayload(
            id=n.id, kind=n.kind, subject=n.subject, body=n.body, recipients=n.recipients, attachments=n.attachments,
            entity_kind=n.entity_kind, entity_id=n.entity_id, metadata=n.metadata, created_at=n.created_at, sent_at=sent_at))
        response = self._http.post(self.settings.webhook_url, content=body, headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.settings.webhook_secret, body),
            TIMESTAMP_HEADER: str(sent_at),
            "X-Dropwire-Delivery": str(n.id),
        })
        response.raise_for_status()
