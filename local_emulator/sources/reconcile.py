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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec
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
            name = entry.name
            # Hidden folders are never entered, so the name alone decides (this runs per file).
            if name.startswith(".") or name.endswith(TEMPORARY_SUFFIXES):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                    continue
                if not entry.is_file():
                    continue
                stat = entry.stat()  # a symlink counts as its target
            except OSError:
                continue
            if entry.is_symlink() and not os.path.realpath(entry.path).startswith(prefix):
                continue
            key = entry.path[len(prefix):]
            yield Found(entry.path, key if os.sep == "/" else key.replace(os.sep, "/"), stat)


class Reconciler:
    """Which files of the folder bucket no receipt covers, for the functions that watch them."""

    def __init__(self, functions: FunctionRegistry, query: Query, bucket: str, scratch_dir: Path | None = None) -> None:
        self.functions = functions
        self.query = query
        self.bucket = bucket
        self.scratch_dir = scratch_dir
        # The triggers a new file of this bucket fires, as (function, prefix, suffix): the
        # bucket and event name are the same for every file, so they are matched once here
        # (a trigger's own test per file cost 6 s per 10^5 files).
        probe = ObjectEvent(bucket=bucket, key="", raw_key="", size=0, etag="", version_id="", sequencer=None,
                            event_name="ObjectCreated:Put", event_time="", source="folder")
        self._rules = [(spec.name, trigger.prefix, trigger.suffix) for spec in functions for trigger in spec.uploads()
                       if msgspec.structs.replace(trigger, prefix="", suffix="").matches(probe)]

    def watchers(self, key: str) -> list[str]:
        """The functions a new file at `key` fires."""
        return list(dict.fromkeys(name for name, prefix, suffix in self._rules
                                  if key.startswith(prefix) and key.endswith(suffix)))

    def unadmitted(self, files: list[Found]) -> list[tuple[Found, list[str]]]:
        """The files (with the functions still owed them) that no receipt covers."""
        columns: dict[str, list] = {"function": [], "key": [], "version": [], "size": [], "changed": []}
        by_key: dict[str, Found] = {}
        for found in files:
            for function in self.watchers(found.key):
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
