"""The local folder as a bucket, with real file writes."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dropwire.functions.platform.registry import ObjectEvent
from dropwire.local_emulator.sources.folder import FolderSource
from tests.conftest import wait_for


@pytest.fixture
def watch(tmp_path):
    """Start a FolderSource on a bucket folder that already holds one file; returns the folder
    and the events emitted so far."""
    started: list[FolderSource] = []

    def start(settle_seconds: float = 0.05) -> tuple[Path, list[ObjectEvent]]:
        seen: list[ObjectEvent] = []
        lock = threading.Lock()

        def emit(events: list[ObjectEvent]) -> None:
            with lock:
                seen.extend(events)

        root = tmp_path / "bucket"
        root.mkdir()
        (root / "before.csv").write_text("arrived while nobody watched\n")
        started.append(FolderSource(root, "local", emit, settle_seconds=settle_seconds).start())
        return root, seen

    yield start
    for folder in started:
        folder.stop()


@pytest.fixture
def source(watch):
    return watch()


def keys(seen: list[ObjectEvent]) -> list[str]:
    return sorted(e.key for e in seen)


def barrier(root: Path, seen: list[ObjectEvent], name: str = "zz-barrier.csv") -> None:
    """Write a file and wait for its event: everything written before it has been looked at
    by then, so what was not emitted by now is not going to be (no sleeping on it)."""
    (root / name).write_text("barrier\n")
    wait_for(lambda: name in keys(seen), what=f"the barrier file {name}")


def test_catch_up_then_new_files_with_normalised_fields(source):
    root, seen = source
    wait_for(lambda: keys(seen) == ["before.csv"], what="the catch-up event")
    (root / "new dir").mkdir()
    (root / "new dir" / "red flower+1.csv").write_bytes(b"12345")
    wait_for(lambda: "new dir/red flower+1.csv" in keys(seen), what="the new file in a new directory")
    event = next(e for e in seen if e.key == "new dir/red flower+1.csv")
    assert (event.bucket, event.size, event.event_name, event.source) == ("local", 5, "ObjectCreated:Put", "folder")
    assert event.sequencer and event.version_id
    # The event's time is the file's mtime (what S3 calls eventTime), its version mtime-size.
    stat = (root / "new dir" / "red flower+1.csv").stat()
    assert event.event_time == datetime.fromtimestamp(stat.st_mtime_ns / 1e9, timezone.utc).isoformat()
    assert event.version_id == f"{stat.st_mtime_ns}-5" and int(event.sequencer, 16) == stat.st_mtime_ns


def test_a_file_is_emitted_once_and_only_when_completely_written(watch):
    # A settle time far above the writer's pauses, so a loaded box cannot make the pauses look
    # like a finished file; the pauses are long enough for the watcher to see each part.
    root, seen = watch(settle_seconds=1.0)
    wait_for(lambda: keys(seen) == ["before.csv"], what="the catch-up event")
    with open(root / "big.bin", "wb") as out:
        for _ in range(6):
            out.write(b"x" * 100_000)
            out.flush()
            time.sleep(0.03)
    wait_for(lambda: "big.bin" in keys(seen), what="the finished file")
    barrier(root, seen)
    big = [e for e in seen if e.key == "big.bin"]
    assert len(big) == 1 and big[0].size == 600_000


def test_hidden_and_temporary_files_are_ignored_and_renames_count(source):
    root, seen = source
    wait_for(lambda: keys(seen) == ["before.csv"], what="the catch-up event")
    for name in (".hidden", "data.csv.tmp", "upload.part", "x.crdownload", "notes.txt~"):
        (root / name).write_text("ignore me")
    (root / ".staging").mkdir()
    (root / ".staging" / "inside.csv").write_text("ignore me too")
    (root / ".writing.csv").write_text("complete")
    os.rename(root / ".writing.csv", root / "renamed.csv")
    wait_for(lambda: "renamed.csv" in keys(seen), what="the renamed file")
    barrier(root, seen)
    assert keys(seen) == ["before.csv", "renamed.csv", "zz-barrier.csv"]


def test_deletions_are_reported(source):
    root, seen = source
    wait_for(lambda: keys(seen) == ["before.csv"], what="the catch-up event")
    (root / "before.csv").unlink()
    wait_for(lambda: any(e.event_name == "ObjectRemoved:Delete" for e in seen), what="the delete event")
