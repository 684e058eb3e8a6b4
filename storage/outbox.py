"""The notifications outbox: notifications commit with the change that causes them, and their
delivery is recorded here as it happens.

Promises:
- A notification requested in an `Effects` is checked (kind, subject, e-mail addresses,
  JSON-encodable metadata) while its change is planned, and its row commits in the same
  transaction as that change, as `pending`, due at once.
- `mark_notification` records one delivery attempt: the status, attempts, error and next
  attempt time; a channel's first success time is kept however often it is marked again.
- `pending_notifications` lists the due pending ones, oldest first; `notifications` the
  newest, optionally of one status. Both read committed data only.
"""

from __future__ import annotations

import duckdb
import msgspec

from dropwire.functions.kit.errors import DropwireError, NotFound
from dropwire.storage.commit_group import EPOCH, INT32, INT64, STRING, CommitGroup, TableSpec
from dropwire.storage.records import NotificationRecord, NotificationRequest
from dropwire.storage.writer import Facet, Writer

NOTIFICATION_STATUSES = ("pending", "sent", "recorded", "failed")

# Rows are inserted with the change that causes them; delivery updates them with plain
# UPDATE statements (Outbox.mark_notification).
NOTIFICATIONS = TableSpec(
    "notifications",
    (("id", INT64), ("kind", STRING), ("recipients", STRING), ("subject", STRING), ("body", STRING),
     ("attachments", STRING), ("entity_kind", STRING), ("entity_id", STRING), ("metadata", STRING),
     ("status", STRING), ("attempts", INT32), ("next_attempt_at", EPOCH), ("created_at", EPOCH), ("updated_at", EPOCH)),
    key=("id",),
    timestamps=frozenset({"next_attempt_at", "created_at", "updated_at"}),
)

_json = msgspec.json.Encoder()


class Outbox(Facet):
    def __init__(self, writer: Writer) -> None:
        super().__init__(writer)
        self._next_id = 1

    def load(self, con: duckdb.DuckDBPyConnection, *, restart_grace: bool) -> None:
        self._next_id = (con.execute("SELECT max(id) FROM notifications").fetchone()[0] or 0) + 1  # pyright: ignore[reportOptionalSubscript]  # an aggregate answers one row

    # ------------------------------------------------------------------ staging (inside another facet's operation)

    @staticmethod
    def plan(request: NotificationRequest, now: float) -> tuple:
        """A notification's row (without its id), or a refusal that names what is wrong."""
        if not request.kind or not request.subject:
            raise DropwireError(f"a notification needs a kind and a subject, got kind={request.kind!r} subject={request.subject!r}")
        for address in request.recipients:
            if "@" not in address or any(c.isspace() for c in address):
                raise DropwireError(f"notification {request.kind!r}: {address!r} is not an e-mail address", kind=request.kind)
        try:
            metadata = _json.encode(request.metadata).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            raise DropwireError(f"metadata of notification {request.kind!r} cannot be encoded as JSON: {exc}") from None
        return (request.kind, _json.encode(request.recipients).decode(), request.subject, request.body,
                _json.encode(request.attachments).decode(), request.entity_kind, request.entity_id, metadata,
                "pending", 0, now, now, now)

    def stage(self, row: tuple, batch: CommitGroup) -> None:
        """Stage a planned row under the next notification id."""
        batch.add(NOTIFICATIONS, (self._next_id, *row), new=True)
        self._next_id += 1

    # ------------------------------------------------------------------ delivery

    def mark_notification(self, notification_id: int, *, status: str, attempts: int, last_error: str | None = None,
                          next_attempt_at: float | None = None, eml_path: str | None = None,
                          email_sent: bool = False, webhook_sent: bool = False) -> None:
        """Record a delivery attempt: which channels succeeded (their first success time is
        kept), the status, the attempts so far, the error and when to try again."""
        if status not in NOTIFICATION_STATUSES:
            raise DropwireError(f"notification status must be one of {NOTIFICATION_STATUSES}, got {status!r}")

        def op(batch: CommitGroup, now: float) -> None:
            if self.writer.connection.execute("SELECT 1 FROM notifications WHERE id = ?", [notification_id]).fetchone() is None:
                raise NotFound(f"no notification {notification_id}", notification_id=notification_id)
            batch.execute(
                "UPDATE notifications SET status = ?, attempts = ?, last_error = ?, "
                "next_attempt_at = to_timestamp(?), eml_path = coalesce(?, eml_path), "
                "email_sent_at = CASE WHEN ? THEN coalesce(email_sent_at, to_timestamp(?)) ELSE email_sent_at END, "
                "webhook_sent_at = CASE WHEN ? THEN coalesce(webhook_sent_at, to_timestamp(?)) ELSE webhook_sent_at END, "
                "updated_at = to_timestamp(?) WHERE id = ?",
                (status, attempts, last_error, next_attempt_at if next_attempt_at is not None else now, eml_path,
                 email_sent, now, webhook_sent, now, now, notification_id))

        self.writer.call(op)

    def pending_notifications(self, limit: int = 100) -> list[NotificationRecord]:
        """Pending notifications whose next attempt is due, oldest first."""
        return self._select("WHERE status = 'pending' AND next_attempt_at <= now()", [], limit)

    def notifications(self, status: str | None = None, limit: int = 100) -> list[NotificationRecord]:
        """The newest notifications, optionally of one status."""
        if status is not None and status not in NOTIFICATION_STATUSES:
            raise DropwireError(f"notification status must be one of {NOTIFICATION_STATUSES}, got {status!r}")
        where, params = ("WHERE status = ?", [status]) if status is not None else ("", [])
        return self._select(where, params, limit, newest_first=True)

    def _select(self, where: str, params: list, limit: int, newest_first: bool = False) -> list[NotificationRecord]:
        rows = self.writer.cursor().execute(
            "SELECT id, kind, subject, body, recipients, attachments, entity_kind, entity_id, metadata, status, attempts, "
            "last_error, epoch(created_at), epoch(next_attempt_at), epoch(email_sent_at), epoch(webhook_sent_at), eml_path "
            f"FROM notifications {where} ORDER BY id {'DESC' if newest_first else ''} LIMIT ?", [*params, limit]).fetchall()
        return [NotificationRecord(id=i, kind=k, subject=s, body=b, recipients=msgspec.json.decode(r),
                                   attachments=msgspec.json.decode(a), entity_kind=ek, entity_id=ei,
                                   metadata=msgspec.json.decode(m), status=st, attempts=at, last_error=e, created_at=c,
                                   next_attempt_at=n, email_sent_at=es, webhook_sent_at=ws, eml_path=p)
                for i, k, s, b, r, a, ek, ei, m, st, at, e, c, n, es, ws, p in rows]
