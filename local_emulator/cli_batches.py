"""`dropwire batches`: batch inference as the store records it (through the running control
plane when there is one): batches, the workers running their lines, throughput figures."""

from __future__ import annotations

from datetime import datetime, timezone

import typer
from rich.table import Table

from dropwire.local_emulator.cli_context import Lazy, console, current_settings

reads = Lazy("dropwire.functions.batches.reads")
store_access = Lazy("dropwire.local_emulator.control_plane", "store_access")

batches_app = typer.Typer(help="Batch inference: batches, their workers and benchmark figures.", no_args_is_help=True)


def _when(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@batches_app.command("list")
def batches_list(limit: int = typer.Option(20, "--limit", help="How many, newest first.")) -> None:
    """Batches with their status and request counts."""
    with store_access(current_settings()) as store:
        found = [reads.batch_object(store.query, batch_id) for batch_id in reads.batch_ids(store.query, limit=limit, after=None)]
    table = Table("batch", "status", "endpoint", "model", "total", "completed", "failed", "created", "output file")
    for b in found:
        table.add_row(b.id, b.status, b.endpoint, b.model or "", str(b.request_counts.total), str(b.request_counts.completed),
                      str(b.request_counts.failed), _when(b.created_at), b.output_file_id or "")
    console.print(table if found else "no batches")


@batches_app.command("workers")
def batches_workers() -> None:
    """Workers that ran batch lines: alive or not, and when they last beat."""
    settings = current_settings()
    with store_access(settings) as store:
        found = reads.workers(store.query, settings.batches.heartbeat_alive_seconds)
    table = Table("worker", "alive", "last beat", "batch", "chunk", "lines saved")
    for w in found:
        table.add_row(w.worker, "yes" if w.alive else "no", _when(w.last_beat), w.batch_id, str(w.chunk), str(w.lines_done))
    console.print(table if found else "no worker has run batch lines")


@batches_app.command("benchmarks")
def batches_benchmarks(by: str = typer.Option("batch", "--by", help="batch (each finished batch) or model (summed).")) -> None:
    """Lines/s, tokens/s and duration per finished batch or per model (table batch_benchmarks)."""
    if by not in ("batch", "model"):
        raise typer.BadParameter("--by is 'batch' or 'model'")
    with store_access(current_settings()) as store:
        found = reads.benchmarks(store.query, by_model=by == "model")
    table = Table(by, "model", "batches", "lines", "failed", "tokens", "duration s", "lines/s", "tokens/s")
    for f in found:
        table.add_row(f.name, f.model, str(f.batches), str(f.lines), str(f.failed), str(f.tokens), f"{f.duration_s:.2f}",
                      f"{f.lines_per_s:.1f}", f"{f.tokens_per_s:.1f}")
    console.print(table if found else "no finished batches yet")
