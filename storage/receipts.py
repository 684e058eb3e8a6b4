"""What already fired: object-event receipts, output lineage and schedule runs.

Promises:
- `admit` queues one task per (object event, function) offered, unless the same (function,
  bucket, key, version) was admitted before (`duplicate`) or a newer event of the key was
  (`stale`, by S3 sequencer), also after `queue cleanup` deleted the task it was admitted by;
  every offer of one call commits in one group commit. An offer that cannot be (its task
  refused, its rows failing the commit) is answered `failed` with its key and the reason,
  and the others are admitted all the same.
- `record_output` notes, before a handler writes an object, how many handler hops away from
  an outside upload it is; `hops_of` answers that for committed objects (outside ones are
  left out).
- `fire_schedule` queues a schedule's run for a fire time unless a run at or after that time
  was queued already, so a restart never runs a schedule twice for one time.
"""

from __future__ import annotations

from functools import partial

import duckdb
import msgspec

from dropwire.functions.kit.errors import DropwireError
from dropwire.storage.commit_group import EPOCH, INT64, STRING, CommitGroup, TableSpec
from dropwire.storage.records import Admission, ObjectReceipt, TaskSpec
from dropwire.storage.task_planning import EncodedTask, LiveTasks
from dropwire.storage.writer import Facet, StoreWriteFailed, Writer

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


def printable(key: str) -> str:
    """A key as text that can be shown and stored anywhere: the bytes of a name that is not
    UTF-8 (which Python holds as surrogates) as \\x escapes."""
    try:
        return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (e.g. from JSON)
        return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _failed(receipt: ObjectReceipt, reason: str) -> Admission:
    return Admission(outcome="failed", reason=printable(f"{receipt.bucket}/{receipt.key} could not be admitted for "
                                                        f"{receipt.function}: {reason}"))


def sequencer_before(a: str, b: str) -> bool:
    """S3 sequencers order the events of one key: right-pad with zeros, compare as strings."""
    width = max(len(a), len(b))
    return a.upper().ljust(width, "0") < b.upper().ljust(width, "0")


class Receipts(Facet):
    def __init__(self, writer: Writer, tasks: LiveTasks) -> None:
        super().__init__(writer)
        self.tasks = tasks
        #: (function, bucket, key) -> (sequencer, version, task id) of its latest receipt
        self._latest: dict[tuple[str, str, str], tuple[str | None, str, int]] = {}
        self._schedule_fires: dict[str, float] = {}

    def load(self, con: duckdb.DuckDBPyConnection, *, restart_grace: bool) -> None:
        self._latest = {}
        for function, bucket, key, sequencer, version, task_id in con.execute(
            'SELECT function, bucket, "key", sequencer, version, task_id FROM object_receipts'
        ).fetchall():
            place = (function, bucket, key)
            latest = self._latest.get(place)
            if latest is None or (sequencer and (latest[0] is None or sequencer_before(latest[0], sequencer))):
                self._latest[place] = (sequencer, version, task_id)
        self._schedule_fires = dict(con.execute("SELECT schedule, epoch(last_fire) FROM schedule_runs").fetchall())

    # ------------------------------------------------------------------ object events

    def admit(self, offers: list[tuple[ObjectReceipt, TaskSpec]]) -> list[Admission]:
        """For each object event offered to a function, queue its task unless the same
        (function, bucket, key, version) was admitted before (duplicate) or a newer event for
        the key was (stale). All in one group commit; an offer that cannot be written (its
        task refused, its row failing the commit) is answered `failed` with the reason, and
        the others are admitted all the same."""
        encoded: list[tuple[ObjectReceipt, EncodedTask | None, str]] = []
        for receipt, spec in offers:
            try:
                encoded.append((receipt, self.tasks.encode(spec), ""))
            except DropwireError as exc:
                encoded.append((receipt, None, exc.message))
        try:
            return self.writer.call(partial(self._op_admit, encoded))
        except StoreWriteFailed as exc:
            if len(encoded) == 1:
                return [_failed(encoded[0][0], exc.message)]
        # Each offer on its own: the writer runs them one by one once their group commit fails.
        futures = [self.writer.submit(partial(self._op_admit, [item])) for item in encoded]
        answers = []
        for (receipt, _, _), future in zip(encoded, futures, strict=False):
            try:
                answers.extend(future.result())
            except StoreWriteFailed as exc:
                answers.append(_failed(receipt, exc.message))
        return answers

    def _op_admit(self, encoded: list[tuple[ObjectReceipt, EncodedTask | None, str]], batch: CommitGroup,
                  now: float) -> list[Admission]:
        return [self._admit_one(receipt, spec, batch, now) if spec is not None else _failed(receipt, refused)
                for receipt, spec, refused in encoded]

    def _admit_one(self, receipt: ObjectReceipt, encoded: EncodedTask, batch: CommitGroup, now: float) -> Admission:
        dedupe = f"object:{receipt.function}:{receipt.bucket}:{receipt.key}:{receipt.version}"
        place = (receipt.function, receipt.bucket, receipt.key)
        done = self._admitted_before(dedupe, place, receipt.version)
        if done is not None:
            return Admission(outcome="duplicate", task_id=done,
                             reason=f"{receipt.bucket}/{receipt.key} version {receipt.version} was already admitted for {receipt.function}")
        latest = self._latest.get(place)
        if receipt.sequencer and latest and latest[0] and sequencer_before(receipt.sequencer, latest[0]):
            return Admission(outcome="stale", reason=f"event sequencer {receipt.sequencer} is older than "
                                                     f"{latest[0]}, already admitted for {receipt.bucket}/{receipt.key}")
        spec, args = encoded
        task = self.tasks.plan_one((msgspec.structs.replace(spec, idempotency_key=dedupe), args), now)
        self.tasks.stage_new(task, batch, now)
        batch.add(OBJECT_RECEIPTS, (receipt.function, receipt.bucket, receipt.key, receipt.version, receipt.sequencer,
                                    receipt.event_name, task.id, now))
        if receipt.sequencer or latest is None or not latest[0]:
            self._latest[place] = (receipt.sequencer, receipt.version, task.id)
        return Admission(outcome="accepted", task_id=task.id)

    def _admitted_before(self, dedupe: str, place: tuple[str, str, str], version: str) -> int | None:
        """The task that admitted this version before, if one did. The queue's keys know it
        while the task is kept; the receipts themselves once `queue cleanup` deleted it (the
        latest version of each key is held in memory, an older one is looked up)."""
        task_id = self.tasks.index.by_key.get(dedupe)
        if task_id is not None:
            return task_id
        latest = self._latest.get(place)
        if latest is None:
            return None  # no version of this key was ever admitted for this function
        if latest[1] == version:
            return latest[2]
        row = self.writer.connection.execute(
            'SELECT task_id FROM object_receipts WHERE function = ? AND bucket = ? AND "key" = ? AND version = ?',
            [*place, version]).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ output lineage

    def record_output(self, bucket: str, key: str, *, hop: int, function: str, task_id: int) -> None:
        """Note, before a handler writes it, that an object comes from a handler `hop` hops
        away from an outside upload."""
        def op(batch: CommitGroup, now: float) -> None:
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

        def op(batch: CommitGroup, now: float) -> int | None:
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
