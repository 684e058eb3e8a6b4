"""CLI commands for the folder bucket: which of its files no receipt covers."""

from __future__ import annotations

import typer

from dropwire.functions.kit.errors import DropwireError
from dropwire.local_emulator.cli_context import console, current_settings

bucket_app = typer.Typer(help="The folder bucket: files in it that nothing has admitted.", no_args_is_help=True)


@bucket_app.command("unadmitted")
def unadmitted() -> None:
    """List the files in the folder bucket that a function watches and no receipt covers
    (the emulator's reconciliation admits them: at start, after an overflow, every
    events.reconcile_seconds)."""
    # Imported here: `dropwire --help` has no use for the store, pyarrow or polars.
    from dropwire.functions.platform.registry import load_functions
    from dropwire.local_emulator.control_plane import read_access
    from dropwire.local_emulator.sources.reconcile import Reconciler, walk

    settings = current_settings()
    if settings.events.bucket_s3:
        raise DropwireError(f"the bucket is the S3 bucket {settings.events.bucket_s3!r} (events.bucket_s3); "
                            "this command reads the folder bucket")
    root = settings.bucket_path
    with read_access(settings) as store:
        reconciler = Reconciler(load_functions(settings.functions), store.query, settings.events.bucket,
                                settings.data_path / "tmp")
        missed = reconciler.unadmitted(list(walk(root)) if root.is_dir() else [])
    out = console.print
    if not missed:
        out(f"every file in bucket {settings.events.bucket} ({root}) that a function watches has a receipt",
            soft_wrap=True, highlight=False)
        return
    out(f"{len(missed)} file(s) in bucket {settings.events.bucket} ({root}) have no receipt:", soft_wrap=True,
        highlight=False)
    for found, functions in missed:
        # One file a line, the key whole (never cut), what it is owed after it.
        out(f"{found.key}  (for {', '.join(functions)}; {found.stat.st_size} bytes)", soft_wrap=True, highlight=False,
            markup=False)
