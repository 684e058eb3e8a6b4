"""CLI commands for the database, the queue, dead letters, notifications, workers and the control plane."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import msgspec
import typer

from dropwire.functions.kit.errors import DropwireError
from dropwire.local_emulator.cli_context import Lazy, console, current_settings, print_records, prose, when, whole

MACHINES = Lazy("dropwire.functions.machines", "MACHINES")
ControlClient = Lazy("dropwire.local_emulator.control", "ControlClient")
read_access = Lazy("dropwire.local_emulator.control_plane", "read_access")
require_database = Lazy("dropwire.local_emulator.control_plane", "require_database")
run_control_plane = Lazy("dropwire.local_emulator.control_plane", "run_control_plane")
running_control_plane = Lazy("dropwire.local_emulator.control_plane", "running_control_plane")
start_pool = Lazy("dropwire.local_emulator.control_plane", "start_pool")
stop_on_signals = Lazy("dropwire.local_emulator.control_plane", "stop_on_signals")
store_access = Lazy("dropwire.local_emulator.control_plane", "store_access")
consistency = Lazy("dropwire.storage.consistency")
migrate = Lazy("dropwire.storage.migrate")
connect = Lazy("dropwire.storage.database", "connect")
run_read_only_table = Lazy("dropwire.storage.read_only_query", "run_read_only_table")


log = logging.getLogger("dropwire.worker")

db_app = typer.Typer(help="The DuckDB state database: schema migrations, checks, snapshots.", no_args_is_help=True)
queue_app = typer.Typer(help="The durable task queue: statistics, task status, cleanup.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: tasks that spent their attempts.", no_args_is_help=True)
notifications_app = typer.Typer(help="Notifications: the outbox of e-mails and webhooks.", no_args_is_help=True)


def _print_json(value: object) -> None:
    console.print_json(json.dumps(msgspec.to_builtins(value), default=str))


# ---------------------------------------------------------------- db


@db_app.command("current")
def db_current() -> None:
    """Show the schema version and every applied migration."""
    settings = current_settings()
    require_database(settings)
    with connect(settings.database_path, read_only=True) as con:
        applied = migrate.applied_migrations(con)
    version = applied[-1][0] if applied else 0
    console.print(f"{settings.database_path}: schema version {version} (this dropwire knows up to {migrate.LATEST})")
    for number, name, at in applied:
        console.print(f"  {number:04d}_{name}  applied {at}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    settings = current_settings()
    with connect(settings.database_path) as con:
        applied = migrate.upgrade(con)
    console.print(f"applied {len(applied)} migration(s): {[f'{m.version:04d}_{m.name}' for m in applied] or 'none, already current'}")


@db_app.command("downgrade")
def db_downgrade(version: int = typer.Argument(..., help="The schema version to go back to (0 empties the database).")) -> None:
    """Undo migrations down to VERSION, newest first."""
    settings = current_settings()
    with connect(settings.database_path) as con:
        undone = migrate.downgrade(con, version)
    console.print(f"undid {len(undone)} migration(s): {[f'{m.version:04d}_{m.name}' for m in undone] or 'none'}")


@db_app.command("check")
def db_check() -> None:
    """Check the database: history contiguous and in step with current states, legal paths, sane tasks."""
    settings = current_settings()
    require_database(settings)
    with connect(settings.database_path, read_only=True) as con:
        migrate.current_version(con)
        problems = consistency.check(con, MACHINES)
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/] {problem}")
        raise DropwireError(f"{len(problems)} consistency problem(s) in {settings.database_path}")
    console.print(f"[green]✓[/] {settings.database_path} is consistent")


@db_app.command("export")
def db_export(directory: Path = typer.Argument(..., help="A new directory for the Parquet snapshot.")) -> None:
    """Write a consistent Parquet snapshot of every table (works while the control plane runs)."""
    with read_access(current_settings()) as store:
        target = store.export(directory)
    console.print(f"exported to {target}; read it with duckdb (\"SELECT * FROM '{target}/state_history.parquet'\") or polars")


@db_app.command("query")
def db_query(sql: str = typer.Argument(..., help="SQL to run over the committed state (works while the control plane runs).")) -> None:
    """Run one SELECT over the state database and print the rows; nothing can be changed."""
    settings = current_settings()
    require_database(settings)
    client = running_control_plane(settings)
    if client is not None:
        try:
            names, rows = client.query_table(sql)
        finally:
            client.close()
    else:  # a stopped database: opened read-only, so even DuckDB itself cannot write it
        with connect(settings.database_path, read_only=True) as con:
            names, rows = run_read_only_table(con, sql)
    # Any column may hold an id or a path, so none is cut; a result too wide is one block per row.
    print_records([whole(name) for name in names], [["" if v is None else str(v) for v in row] for row in rows])
    console.print(f"{len(rows)} row(s)" if rows else "no rows")


# ---------------------------------------------------------------- queue


@queue_app.command("stats")
def queue_stats() -> None:
    """Counts by status and task name, oldest waiting age, attempts."""
    with read_access(current_settings()) as store:
        _print_json(store.queue.stats())


@queue_app.command("status")
def queue_status(task_id: int) -> None:
    """One task: status, arguments, every attempt."""
    with read_access(current_settings()) as store:
        _print_json(store.queue.task(task_id))


@queue_app.command("invocations")
def queue_invocations(
    function: str | None = typer.Option(None, "--function", help="Only this function's runs."),
    outcome: str | None = typer.Option(None, "--outcome",
                                          help="Only this outcome: succeeded, failed, timed_out, waiting, refused."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="How many, newest first."),
) -> None:
    """Handler runs, newest first, each with its outcome and message: a refusal (the user's
    mistake, never a dead letter) or a wait (its prerequisite not there yet) says why."""
    with read_access(current_settings()) as store:
        rows = store.query(
            "SELECT task_id, attempt, function, outcome, epoch(started_at), error FROM invocations "
            "WHERE (? IS NULL OR function = ?) AND (? IS NULL OR outcome = ?) ORDER BY started_at DESC LIMIT ?",
            [function, function, outcome, outcome, limit])
    if not rows:
        console.print("no invocations" + (f" with outcome {outcome}" if outcome else ""))
    # One record per block: the message (file names, commands) is printed whole, never cut.
    for task_id, attempt, name, result, started, error in rows:
        console.print(f"task {task_id} attempt {attempt}  {name}  {result}  {when(started)}", highlight=False)
        if error:
            console.print(f"  {error}", highlight=False, soft_wrap=True)


@queue_app.command("cleanup")
def queue_cleanup(older_than_days: float = typer.Option(7.0, "--older-than-days", help="Age of finished tasks to delete.")) -> None:
    """Delete finished tasks older than N days."""
    with store_access(current_settings()) as store:
        removed = store.queue.cleanup(older_than_days)
    console.print(f"removed {removed} finished task(s) older than {older_than_days} day(s)")


# ---------------------------------------------------------------- dead letters


@dlq_app.command("list")
def dlq_list(all_: bool = typer.Option(False, "--all", help="Include replayed dead letters.")) -> None:
    """Dead letters waiting for attention."""
    with read_access(current_settings()) as store:
        letters = store.queue.dead_letters(include_replayed=all_)
    if not letters:
        console.print("no dead letters")
        return
    print_records([whole("task"), whole("name"), whole("attempts"), whole("died"), whole("replayed as"), prose("last error")],
                  [[str(letter.task_id), letter.name, str(letter.attempts), letter.died_at[:19],
                    str(letter.replayed_task_id or ""), letter.last_error or ""] for letter in letters])


@dlq_app.command("show")
def dlq_show(task_id: int) -> None:
    """One dead letter with its arguments and every attempt's error and traceback."""
    with read_access(current_settings()) as store:
        _print_json(store.queue.dead_letter(task_id))


@dlq_app.command("replay")
def dlq_replay(task_id: int) -> None:
    """Queue a dead task again, with fresh attempts."""
    with store_access(current_settings()) as store:
        new_id = store.queue.replay_dead_letter(task_id)
    console.print(f"dead letter {task_id} replayed as task {new_id}")


# ---------------------------------------------------------------- notifications


@notifications_app.command("list")
def notifications_list(
    status: str | None = typer.Option(None, "--status", help="Only this status: pending, sent, recorded or failed."),
    limit: int = typer.Option(100, "--limit", help="How many, newest first."),
) -> None:
    """Notifications with where their delivery stands."""
    with read_access(current_settings()) as store:
        found = store.outbox.notifications(status, limit)
    if not found:
        console.print("no notifications")
        return
    print_records([whole("id"), whole("kind"), whole("status"), whole("attempts"), whole("entity"), whole("created"),
                   whole("e-mailed"), whole("webhook"), prose("subject"), prose("last error")],
                  [[str(n.id), n.kind, n.status, str(n.attempts), f"{n.entity_kind}/{n.entity_id}" if n.entity_kind else "",
                    when(n.created_at), when(n.email_sent_at), when(n.webhook_sent_at), n.subject, n.last_error or ""]
                   for n in found])


# ---------------------------------------------------------------- processes


def control(
    tasks: str = typer.Option(..., "--tasks", help="MODULE:ATTRIBUTE of the TaskRegistry to serve (your own queue "
                              "tasks). The product's functions run under `dropwire emulate`."),
) -> None:
    """Run a control plane for your own queue tasks: own the database, serve workers and tools
    on the control socket, run local worker threads. Ctrl-C stops it in order."""
    from dropwire.functions.platform.tasks import load_registry

    logging.getLogger().setLevel(logging.INFO)
    run_control_plane(current_settings(), load_registry(tasks), stop_on_signals())


def worker(
    tasks: str = typer.Option("", "--tasks", help="MODULE:ATTRIBUTE of a TaskRegistry to run instead of the "
                              "functions of settings.functions."),
    name: str = typer.Option("", "--name", help="Worker name in task attempts (default: remote-<pid>)."),
) -> None:
    """Run queue.workers threads in this process against a running control plane: by default
    the invocations of the functions in settings.functions, each thread with its own handler
    process, exactly as `dropwire emulate` runs them. Ctrl-C stops it in order."""
    from dropwire.functions.platform.registry import load_functions
    from dropwire.functions.platform.tasks import load_registry
    from dropwire.local_emulator.dispatcher import FunctionWorkers

    logging.getLogger().setLevel(logging.INFO)
    settings = current_settings()
    if settings.queue.workers < 1:
        raise DropwireError("queue.workers is 0, so this worker would run nothing; set DROPWIRE_QUEUE__WORKERS")
    stop = stop_on_signals()
    name = name or f"remote-{os.getpid()}"
    client = ControlClient(settings.control_dial, settings.control_key())
    try:
        if tasks:
            running = start_pool(settings, client.queue, load_registry(tasks), name)
        else:
            running = FunctionWorkers(settings, load_functions(settings.functions))
            try:
                running.start(client.queue, name)
            except BaseException:
                running.stop()
                raise
        log.info("worker %s up: %d thread(s) running %s for the control plane on %s", name, settings.queue.workers,
                 tasks or settings.functions, client.where)
        stop.wait()
        running.stop()
    finally:
        client.close()
