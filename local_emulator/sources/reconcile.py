"""What is in the folder bucket and has no receipt: the safety net under the folder watcher.

A walk of the folder lists every eligible file with its version (mtime-size, the version the
watcher gives its events); one DuckDB anti-join against `object_receipts` (through the
control plane's read-only query, the listing handed over as a Parquet file, not one call per
file) keeps those that a function watches and that no receipt covers. A receipt covers a file
when it names the same (function, key, version), or the same key and size and was taken after
the file last changed (ctime): `cp -p`, `tar x` and `unzip` set an older mtime after the
close that fired the event, and that is the same content, not a new upload."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from dropwire.functions.platform.registry import FunctionRegistry, ObjectEvent

TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".swx", "~")
Query = Callable[[str, list], list[tuple]]


def ignored(relative: str) -> bool:
    parts = relative.split("/")
    return any(p.startswith(".") for p in parts) or relative.endswith(TEMPORARY_SUFFIXES)


def version_of(stat: os.stat_result) -> str:
    return f"{stat.st_mtime_ns}-{stat.st_size}"


class Found(NamedTuple):
    path: str
    key: str
    stat: os.stat_result


def walk(root: Path | str, on_directory: Callable[[str], None] | None = None) -> Iterator[Found]:
    """Every eligible regular file below `root` (hidden folders and files, temporary names and
    symlinks leading out of the folder left out); `on_directory` is called for each folder
    before it is listed (where the watcher adds its watch, so nothing made after the listing
    is missed)."""
    root = os.path.realpath(root)
    prefix = root + os.sep
    pending = [root]
    while pending:
        directory = pending.pop()
        if on_directory is not None:
            on_directory(directory)
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # gone since, or not ours to read
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                    continue
                stat = entry.stat()  # a symlink counts as its target
            except OSError:
                continue
            if not entry.is_file():
                continue
            key = entry.path[len(prefix):].replace(os.sep, "/")
            if ignored(key):
                continue
            if entry.is_symlink() and not os.path.realpath(entry.path).startswith(prefix):
                continue
            yield Found(entry.path, key, stat)


class Reconciler:
    """Which files of the folder bucket no receipt covers, for the functions that watch them."""

    def __init__(self, functions: FunctionRegistry, query: Query, bucket: str, scratch_dir: Path | None = None) -> None:
        self.functions = functions
        self.query = query
        self.bucket = bucket
        self.scratch_dir = scratch_dir

    def watchers(self, key: str, stat: os.stat_result) -> list[str]:
        event = ObjectEvent(bucket=self.bucket, key=key, raw_key=key, size=stat.st_size, etag="", version_id="",
                            sequencer=None, event_name="ObjectCreated:Put", event_time="", source="folder")
        return [spec.name for spec in self.functions.matching(event)]

    def unadmitted(self, files: list[Found]) -> list[tuple[Found, list[str]]]:
        """The files (with the functions still owed them) that no receipt covers."""
        columns: dict[str, list] = {"function": [], "key": [], "version": [], "size": [], "changed": []}
        by_key: dict[str, Found] = {}
        for found in files:
            for function in self.watchers(found.key, found.stat):
                columns["function"].append(function)
                columns["key"].append(found.key)
                columns["version"].append(version_of(found.stat))
                columns["size"].append(str(found.stat.st_size))
                columns["changed"].append(found.stat.st_ctime_ns / 1e9)
                by_key[found.key] = found
        if not by_key:
            return []
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.scratch_dir, prefix="dropwire-reconcile-") as scratch:
            listing = os.path.join(scratch, "listing.parquet")
            pq.write_table(pa.table(columns), listing, compression="none")
            rows = self.query(
                "WITH f AS (SELECT * FROM read_parquet(?)), "
                "r AS (SELECT function, \"key\", version, split_part(version, '-', 2) AS size, epoch(received_at) AS at "
                "FROM object_receipts WHERE bucket = ?) "
                "SELECT f.\"key\", list(f.function ORDER BY f.function) FROM f "
                "ANTI JOIN r ON r.function = f.function AND r.\"key\" = f.\"key\" AND r.version = f.version "
                "ANTI JOIN r AS same ON same.function = f.function AND same.\"key\" = f.\"key\" AND same.size = f.size "
                "AND same.at >= f.changed "
                "GROUP BY f.\"key\" ORDER BY f.\"key\"", [listing, self.bucket])
        return [(by_key[key], list(functions)) for key, functions in rows]
