"""The one `dropwire` command. Errors raised on purpose print as one line, not a traceback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.kit.redact import mask_logs
from dropwire.local_emulator import cli_context
from dropwire.local_emulator.cli_batches import batches_app
from dropwire.local_emulator.cli_bucket import bucket_app
from dropwire.local_emulator.cli_context import console
from dropwire.local_emulator.cli_platform import emulate, events_app, invoke, reprocess, schedule_app
from dropwire.local_emulator.cli_store import control, db_app, dlq_app, notifications_app, queue_app, worker
from dropwire.local_emulator.cli_workflow import quota_app, workflow_app
from dropwire.local_emulator.runtime_cli import runtime_app

app = typer.Typer(
    help="dropwire: files dropped into a bucket fire stateless ML handlers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    settings_file: Path | None = typer.Option(
        None, "--settings", help="TOML settings file (else DROPWIRE_SETTINGS_FILE)."
    ),
) -> None:
    cli_context.state.settings_file = settings_file


@app.command("settings")
def show_settings() -> None:
    """Show the effective settings (secrets masked)."""
    from dropwire.local_emulator.settings import describe_settings

    console.print_json(json.dumps(describe_settings(cli_context.current_settings())))


@app.command("demo")
def demo() -> None:
    """Run the walkthrough on the embedded default and print what happened."""
    from dropwire.local_emulator.demo import run_demo

    run_demo(cli_context.current_settings(), console, cli_context.state.settings_file)


app.add_typer(runtime_app, name="runtime")
app.add_typer(db_app, name="db")
app.add_typer(queue_app, name="queue")
app.add_typer(dlq_app, name="dlq")
app.add_typer(notifications_app, name="notifications")
app.command("control")(control)
app.command("worker")(worker)

app.command("emulate")(emulate)
app.command("invoke")(invoke)
app.command("reprocess")(reprocess)
app.add_typer(schedule_app, name="schedule")
app.add_typer(events_app, name="events")
app.add_typer(batches_app, name="batches")
app.add_typer(bucket_app, name="bucket")
app.add_typer(workflow_app, name="workflow")
app.add_typer(quota_app, name="quota")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Client libraries log each request and credential lookup at INFO: nothing an operator acts on.
    for chatty in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    mask_logs()  # no credentials of a URL in any log line
    try:
        app()
    except DropwireError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(1)
