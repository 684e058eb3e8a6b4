"""The local folder as a bucket, with real file writes."""

from __future__ import annotations

import os
import threading
import time

import pytest

from dropwire.functions.platform.registry import ObjectEvent
from dropwire.local_emulator.sources.folder import FolderSource
from tests.conftest import wait_for


@pytest.fixture
def source(tmp_path):
    seen: list[ObjectEvent] = []
    lock = threading.Lock()

    def emit(events: list[ObjectEvent]) -> None:
        with lock:
            seen.extend(events)

    root = tmp_path / "bucket"
    root.mkdir()
    (root / "before.csv").write_text("arrived while nobody watched\n")
    folder = FolderSource(root, "local", emit, settle_seconds=0.05).start()
    yield root, seen
    folder.stop()


def keys(seen: list[ObjectEvent]) -> list[str]:
    return sorted(e.key for e in seen)


def test_catch_up_then_new_files_with_normalised_fields(source):
    root, seen = source
    wait_for(lambda: keys(seen) == ["before.csv"], what="the catch-up event")
    (root / "new dir").mkdir()
    (root / "new dir" / "red flower+1.csv").write_bytes(b"12345")
    wait_for(lambda: "new dir/red flower+1.csv" in keys(seen), what="the new file in a new directory")
    event = next(e for e in seen if e.key == "new dir/red flower+1.csv")
    assert (event.bucket, event.size, event.event_name, event.source) == ("local", 5, "ObjectCreated:Put", "folder")
    assert event.sequencer and event.version_id


def test_a_file_is_emitted_once_and_only_when_completely_written(source):
    root, seen = source
    wait_for(lambda: keys(seen) == ["before.csv"], what="the catch-up event")
    with open(root / "big.bin", "wb") as out:
        for _ in range(6):
            out.write(b"x" * 100_000)
            out.flush()
            time.sleep(0.03)  # slower than nothing, faster than the settle time
    wait_for(lambda: "big.bin" in keys(seen), what="the finished file")
    time.sleep(0.3)
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
    time.sleep(0.3)
    assert keys(seen) == ["before.csv", "renamed.csv"]


def test_deletions_are_reported(source):
    root, seen = source
    wait_for(lambda: keys(seen) == ["before.csv"], what="the catch-up event")
    (root / "before.csv").unlink()
    wait_for(lambda: any(e.event_name == "ObjectRemoved:Delete" for e in seen), what="the delete event")
