"""Files dropped into the folder bucket the ways people drop them, through the whole emulator:
a slow writer, a file renamed into place, a symlink that leads out of the folder."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from dropwire.local_emulator.sources.folder import CLOSE_EVENTS
from tests.conftest import wait_for
from tests.platform.test_folder_source import SLOW_WRITER

pytestmark = pytest.mark.slow


def handled(emulator, key: str) -> list[tuple]:
    """(outcome, bytes the handler read) of every invocation of `measure` on `key`."""
    return emulator.store.query("SELECT i.outcome, json_extract(t.result, '$.bytes')::BIGINT FROM invocations i "
                                "JOIN tasks t ON t.id = i.task_id WHERE i.function = 'measure' "
                                "AND json_extract_string(i.event, '$.key') = ? ORDER BY i.started_at", [key])


def receipts(emulator, key: str) -> int:
    return emulator.store.query('SELECT count(*) FROM object_receipts WHERE "key" = ?', [key])[0][0]


@pytest.mark.skipif(not CLOSE_EVENTS, reason="close-after-write events are Linux's")
def test_slow_and_renamed_writes_fire_once_on_the_full_content(start_emulator, tmp_path, caplog):
    emulator, _ = start_emulator()
    incoming = emulator.settings.bucket_path / "incoming"
    incoming.mkdir(parents=True)

    slow = incoming / "slow.jsonl"
    assert subprocess.run([sys.executable, "-c", SLOW_WRITER, str(slow)], timeout=30).returncode == 0
    full = slow.stat().st_size
    wait_for(lambda: handled(emulator, "incoming/slow.jsonl"), what="the slow file to be handled")

    elsewhere = tmp_path / "written elsewhere.csv"
    elsewhere.write_text("a,b\n1,2\n")
    os.rename(elsewhere, incoming / "renamed.csv")
    wait_for(lambda: handled(emulator, "incoming/renamed.csv"), what="the renamed file to be handled")

    outside = tmp_path / "outside.csv"
    outside.write_text("not the bucket's")
    with caplog.at_level(logging.WARNING, logger="dropwire.sources.folder"):
        (incoming / "escape.csv").symlink_to(outside)
        wait_for(lambda: any("incoming/escape.csv: a symlink to" in r.getMessage() for r in caplog.records),
                 what="the symlink to be named in the log")

    # A last file after the others: once it is handled, any late event of theirs would be too.
    (incoming / "last.csv").write_text("x")
    wait_for(lambda: handled(emulator, "incoming/last.csv"), what="the last file to be handled")
    assert handled(emulator, "incoming/slow.jsonl") == [("succeeded", full)]
    assert handled(emulator, "incoming/renamed.csv") == [("succeeded", 8)]
    assert (receipts(emulator, "incoming/slow.jsonl"), receipts(emulator, "incoming/renamed.csv")) == (1, 1)
    assert handled(emulator, "incoming/escape.csv") == [] and receipts(emulator, "incoming/escape.csv") == 0
