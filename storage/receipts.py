"""What already fired: object-event receipts, output lineage and schedule runs.

Promises:
- `admit` queues one task per (object event, function) offered, unless the same (function,
  bucket, key, version) was admitted before (`duplicate`) or a newer event of the key was
  (`stale`, by S3 sequencer); every offer of one call commits in one group commit.
- `record_output` notes, before a handler writes an object, how many handler hops away from
  an outside upload it is; `hops_of` answers that for committed objects (outside ones are
  left out).
- `fire_schedule` queues a schedule's run for a fire time unless a run at or after that time
  was queued already, so a restart never runs a schedule twice for one time.
"""

from __future__ import annotations

import duckdb
import msgspec

from dropwire.storage.batch import EPOCH, INT64, STRING, Batch, TableSpec
from dropwire.storage.records import Admission, ObjectReceipt, TaskSpec
from dropwire.storage.tasks import EncodedTask, LiveTasks
from dropwire.storage.writer import Facet, Writer

OBJECT_RECEIPTS = TableSpec(
    "object_receipts",
    (("function", STRING), ("bucket", STRING), ("key", STRING), ("version", STRING), ("sequencer", STRING),
     ("event_name", STRING), ("task_id", INT64), ("received_at", EPOCH)),
    timestamps=frozenset({"received_at"}),
)
SCHEDULE_RUNS = TableSpec(
    "schedule_runs",
    (("schedule", STRING), ("last_fire", EPOCH), ("task_id", INT64), ("updated_at", EPOCH)),
    key=("schedule",),
    timestamps=frozenset({"last_fire", "updated_at"}),
)


def sequencer_before(a: str, b: str) -> bool:
    """S3 sequencers order the events of one key: right-pad with zeros, compare as strings."""
    width = max(len(a), len(b))
    return a.upper().ljust(width, "0") < b.upper().ljust(width, "0")


class Receipts(Facet):
    def __init__(self, writer: Writer, tasks: LiveTasks) -> None:
        super().__init__(writer)
        self.tasks = tasks
        self._sequencers: dict[tuple[str, str, str], str] = {}
        self._schedule_fires: dict[str, float] = {}

    def load(self, con: duckdb.DuckDBPyConnection, *, restart_grace: bool) -> None:
        self._sequencers = {}
        for function, bucket, key, sequencer in con.execute(
            'SELECT function, bucket, "key", sequencer FROM object_receipts WHERE sequencer IS NOT NULL'
        ).fetchall():
            latest = self._sequencers.get((function, bucket, key))
            if latest is None or sequencer_before(latest, sequencer):
                self._sequencers[(function, bucket, key)] = sequencer
        self._schedule_fires = dict(con.execute("SELECT schedule, epoch(last_fire) FROM schedule_runs").fetchall())

    # ------------------------------------------------------------------ object events

    def admit(self, offers: list[tuple[ObjectReceipt, TaskSpec]]) -> list[Admission]:
        """For each object event offered to a function, queue its task unless the same
        (function, bucket, key, version) was admitted before (duplicate) or a newer event for
        the key was (stale). All in one group commit."""
        encoded = [(receipt, self.tasks.encode(spec)) for receipt, spec in offers]

        def op(batch: Batch, now: float) -> list[Admission]:
            return [self._admit_one(receipt, spec, batch, now) for receipt, spec in encoded]

        return self.writer.call(op)

    def _admit_one(self, receipt: ObjectReceipt, encoded: EncodedTask, batch: Batch, now: float) -> Admission:
        dedupe = f"object:{receipt.function}:{receipt.bucket}:{receipt.key}:{receipt.version}"
        by_key = self.tasks.index.by_key
        if dedupe in by_key:
            return Admission(outcome="duplicate", task_id=by_key[dedupe],
                             reason=f"{receipt.bucket}/{receipt.key} version {receipt.version} was already admitted for {receipt.function}")
        place = (receipt.function, receipt.bucket, receipt.key)
        latest = self._sequencers.get(place)
        if receipt.sequencer and latest and sequencer_before(receipt.sequencer, latest):
            return Admission(outcome="stale", reason=f"event sequencer {receipt.sequencer} is older than "
                                                     f"{latest}, already admitted for {receipt.bucket}/{receipt.key}")
        spec, args = encoded
        task = self.tasks.plan_one((msgspec.structs.replace(spec, idempotency_key=dedupe), args), now)
        self.tasks.stage_new(task, batch, now)
        batch.add(OBJECT_RECEIPTS, (receipt.function, receipt.bucket, receipt.key, receipt.version, receipt.sequencer,
                                    receipt.event_name, task.id, now))
        if receipt.sequencer:
            self._sequencers[place] = receipt.sequencer
        return Admission(outcome="accepted", task_id=task.id)

    # ------------------------------------------------------------------ output lineage

    def record_output(self, bucket: str, key: str, *, hop: int, function: str, task_id: int) -> None:
        """Note, before a handler writes it, that an object comes from a handler `hop` hops
        away from an outside upload."""
        def op(batch: Batch, now: float) -> None:
            batch.execute("INSERT OR REPLACE INTO object_lineage VALUES (?, ?, ?, ?, ?, to_timestamp(?))",
                          (bucket, key, hop, function, task_id, now))

        self.writer.call(op)

    def hops_of(self, objects: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """How many handler hops produced each (bucket, key); objects from outside are left out."""
        if not objects:
            return {}
        rows = self.writer.cursor().execute(
            'SELECT bucket, "key", hop FROM object_lineage WHERE (bucket, "key") IN (SELECT unnest(?), unnest(?))',
            [[b for b, _ in objects], [k for _, k in objects]]).fetchall()
        return {(b, k): hop for b, k, hop in rows}

    # ------------------------------------------------------------------ schedules

    def fire_schedule(self, schedule: str, fire_time: float, spec: TaskSpec) -> int | None:
        """Queue a schedule's run for `fire_time` unless a run at or after it was already
        queued; returns the task id, or None when it was."""
        encoded = self.tasks.encode(spec)

        def op(batch: Batch, now: float) -> int | None:
            last = self._schedule_fires.get(schedule)
            if last is not None and last >= fire_time:
                return None
            task = self.tasks.plan_one(encoded, now)
            self.tasks.stage_new(task, batch, now)
            batch.add(SCHEDULE_RUNS, (schedule, fire_time, task.id, now), new=last is None)
            self._schedule_fires[schedule] = fire_time
            return task.id

        return self.writer.call(op)

    def last_fire(self, schedule: str) -> float | None:
        row = self.writer.cursor().execute("SELECT epoch(last_fire) FROM schedule_runs WHERE schedule = ?", [schedule]).fetchone()
        return row[0] if row else None
