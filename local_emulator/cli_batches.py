"""`dropwire batches`: batch inference as the store records it (through the running control
plane when there is one): batches, the workers running their lines, throughput figures."""

from __future__ import annotations

import typer

from dropwire.local_emulator.cli_context import Lazy, console, current_settings, print_records, when, whole

reads = Lazy("dropwire.functions.batches.reads")
read_access = Lazy("dropwire.local_emulator.control_plane", "read_access")

batches_app = typer.Typer(help="Batch inference: batches, their workers and benchmark figures.", no_args_is_help=True)


@batches_app.command("list")
def batches_list(limit: int = typer.Option(20, "--limit", help="How many, newest first.")) -> None:
    """Batches with their status and request counts."""
    with read_access(current_settings()) as store:
        found = [reads.batch_object(store.query, batch_id) for batch_id in reads.batch_ids(store.query, limit=limit, after=None)]
    if not found:
        console.print("no batches")
        return
    print_records([whole("batch"), whole("status"), whole("requests"), whole("output file"), whole("error file"), whole("model"),
                   whole("endpoint"), whole("created")],
                  [[b.id, b.status, f"{b.request_counts.total} total, {b.request_counts.completed} completed, "
                    f"{b.request_counts.failed} failed", b.output_file_id or "", b.error_file_id or "", b.model or "", b.endpoint,
                    when(b.created_at)] for b in found])


@batches_app.command("workers")
def batches_workers() -> None:
    """Workers that ran batch lines: alive or not, and when they last beat."""
    settings = current_settings()
    with read_access(settings) as store:
        found = reads.workers(store.query, settings.batches.heartbeat_alive_seconds)
    if not found:
        console.print("no worker has run batch lines")
        return
    print_records([whole("worker"), whole("alive"), whole("last beat"), whole("batch"), whole("chunk"), whole("lines saved")],
                  [[w.worker, "yes" if w.alive else "no", when(w.last_beat), w.batch_id, str(w.chunk), str(w.lines_done)]
                   for w in found])


@batches_app.command("benchmarks")
def batches_benchmarks(by: str = typer.Option("batch", "--by", help="batch (each finished batch) or model (summed).")) -> None:
    """Lines/s, tokens/s and duration per finished batch or per model (table batch_benchmarks)."""
    if by not in ("batch", "model"):
        raise typer.BadParameter("--by is 'batch' or 'model'")
    with read_access(current_settings()) as store:
        found = reads.benchmarks(store.query, by_model=by == "model")
    if not found:
        console.print("no finished batches yet")
        return
    print_records([whole(by), whole("model"), whole("batches"), whole("lines"), whole("failed"), whole("tokens"),
                   whole("duration s"), whole("lines/s"), whole("tokens/s")],
                  [[f.name, f.model, str(f.batches), str(f.lines), str(f.failed), str(f.tokens), f"{f.duration_s:.2f}",
                    f"{f.lines_per_s:.1f}", f"{f.tokens_per_s:.1f}"] for f in found])
