"""A consistency check over a database file: what must hold however the last process died."""

from __future__ import annotations

from collections.abc import Iterable

import duckdb

from dropwire.storage.state_machine import StateMachine, machine_registry

_TASK_STATUSES = ("queued", "running", "retrying", "waiting", "succeeded", "dead", "refused")


def check(con: duckdb.DuckDBPyConnection, machines: Iterable[StateMachine]) -> list[str]:
    """Every problem found, as sentences; an empty list means consistent."""
    registry = machine_registry(machines)
    problems: list[str] = []

    def each(sql: str, message: str) -> None:
        for row in con.execute(sql).fetchall():
            problems.append(message.format(*row))

    each("""SELECT h.kind, h.entity_id, count(*), min(seq), max(seq) FROM state_history h GROUP BY ALL
            HAVING min(seq) <> 1 OR max(seq) <> count(*)""",
         "{0} {1}: history sequence numbers are not contiguous from 1 ({2} rows, seq {3}..{4})")
    each("""SELECT e.kind, e.entity_id, e.state, e.version, h.to_state, h.seq FROM entity_states e
            LEFT JOIN (SELECT kind, entity_id, arg_max(to_state, seq) AS to_state, max(seq) AS seq FROM state_history GROUP BY ALL) h
            USING (kind, entity_id)
            WHERE h.seq IS NULL OR e.version <> h.seq OR e.state <> h.to_state""",
         "{0} {1}: current state {2} v{3} is out of step with its last history row ({4} at seq {5})")
    each("""SELECT kind, entity_id FROM state_history EXCEPT SELECT kind, entity_id FROM entity_states""",
         "{0} {1}: history without a current state")
    each("""SELECT kind, entity_id, seq, from_state, prev FROM (
              SELECT *, lag(to_state) OVER (PARTITION BY kind, entity_id ORDER BY seq) AS prev FROM state_history)
            WHERE seq > 1 AND from_state IS DISTINCT FROM prev""",
         "{0} {1}: transition {2} starts from {3} but the entity was in {4}")
    for kind, source, dest, trigger in con.execute(
        'SELECT DISTINCT kind, from_state, to_state, "trigger" FROM state_history'
    ).fetchall():
        machine = registry.get(kind)
        if machine is None:
            problems.append(f"history names entity kind {kind!r}, which no machine defines")
        elif source is None:
            if dest != machine.initial or trigger != "create":
                problems.append(f"{kind}: an entity was created in {dest} by {trigger}, not in {machine.initial}")
        elif not any(t.dest == dest and t.trigger == trigger for t in machine.allowed(source)):
            problems.append(f"{kind}: history holds {source} -{trigger}-> {dest}, which the machine does not allow")
    each(f"""SELECT id, status FROM tasks WHERE status NOT IN {_TASK_STATUSES}""", "task {0} has unknown status {1}")
    each("""SELECT id FROM tasks WHERE status = 'running' AND (token IS NULL OR lease_expires IS NULL)""",
         "task {0} is running without a lease")
    each("""SELECT id, attempts, max_attempts FROM tasks WHERE attempts > max_attempts""",
         "task {0} ran {1} times, more than its maximum {2}")
    each("""SELECT id FROM tasks WHERE status = 'dead' AND id NOT IN (SELECT task_id FROM dead_letters)""",
         "task {0} is dead but has no dead letter")
    return problems

