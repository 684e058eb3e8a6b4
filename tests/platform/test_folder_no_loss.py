"""Nothing dropped into the folder bucket is lost or read half-way, through the whole
emulator: folders made while the watcher sets itself up, files written slowly into a folder
made just before, an event that cannot be routed, files the watcher never saw."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dropwire.functions.platform.registry import load_functions
from dropwire.local_emulator.control_plane import open_store
from dropwire.local_emulator.emulator import Emulator
from dropwire.local_emulator.router import EventRouter
from dropwire.local_emulator.sources.folder import CLOSE_EVENTS, FolderSource
from dropwire.local_emulator.sources.reconcile import Reconciler
from tests.conftest import REPO, wait_for
from tests.platform.conftest import emulator_settings

pytestmark = pytest.mark.slow


def admitted(emulator_or_store, prefix: str) -> dict[str, int]:
    """key -> receipts for `measure`, for the keys under `prefix`."""
    store = getattr(emulator_or_store, "store", emulator_or_store)
    return dict(store.query('SELECT "key", count(*) FROM object_receipts WHERE function = \'measure\' '
                                     'AND starts_with("key", ?) GROUP BY "key"', [prefix]))


def drop(path, text: str = "a,b\n1,2\n") -> None:
    """The README's safe way: write under a hidden name, rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hidden = path.parent / f".{path.name}.writing"
    hidden.write_text(text)
    os.rename(hidden, path)


def test_files_renamed_into_folders_made_at_once_are_all_admitted(start_emulator):
    """`mkdir -p` of a new parent and its children while the watcher adds its watches: a
    child made between the listing of its parent and the watch on it was neither listed nor
    watched, so what was dropped into it later was never seen (5 of 200 here before the fix)."""
    emulator, _ = start_emulator()
    bucket = emulator.settings.bucket_path
    leaves = [bucket / "incoming" / f"batch{b}" / f"case{i:02d}" for b in range(8) for i in range(25)]
    for b in range(8):
        subprocess.run(["mkdir", "-p", *map(str, leaves[b * 25:(b + 1) * 25])], check=True)
    time.sleep(1)
    for leaf in leaves:
        drop(leaf / "rows.csv")
    expected = {str(leaf.relative_to(bucket) / "rows.csv") for leaf in leaves}
    wait_for(lambda: set(admitted(emulator, "incoming/")) == expected, timeout=30,
             what=lambda: f"every dropped file admitted; missing {sorted(expected - set(admitted(emulator, 'incoming/')))}")
    assert set(admitted(emulator, "incoming/").values()) == {1}


# Makes a folder and, at once, a JSON file in it written in five pieces over a second: the
# folder's first listing finds the file while it is still open.
SLOW_JSON_IN_NEW_FOLDER = """
import os, sys, time
folder = sys.argv[1]
os.makedirs(folder)
with open(os.path.join(folder, "use-case.json"), "w") as out:
    for piece in ('{"name": "demo", ', '"owner": "ops", ', '"metric": "f1", ', '"threshold": 0.8, ', '"labels": []}'):
        out.write(piece)
        out.flush()
        time.sleep(0.2)
"""


def invocations(emulator, function: str, key: str) -> list[tuple]:
    return emulator.store.query("SELECT outcome, error FROM invocations WHERE function = ? "
                                "AND json_extract_string(event, '$.key') = ? ORDER BY started_at", [function, key])


@pytest.mark.skipif(not CLOSE_EVENTS, reason="close-after-write events are Linux's")
def test_a_file_written_slowly_into_a_new_folder_is_read_once_whole(start_emulator):
    """A folder's first listing found the file open and emitted it once it held still for the
    settle time, between two pieces: the handler read it half-way and failed ("is not valid:
    Input data was truncated"), then the close fired it again."""
    emulator, _ = start_emulator()
    bucket = emulator.settings.bucket_path
    folders = [bucket / "json-in" / f"case{i}" for i in range(3)]
    writers = [subprocess.Popen([sys.executable, "-c", SLOW_JSON_IN_NEW_FOLDER, str(folder)]) for folder in folders]
    assert [w.wait(timeout=30) for w in writers] == [0, 0, 0]
    for folder in folders:
        key = str((folder / "use-case.json").relative_to(bucket))
        wait_for(lambda key=key: invocations(emulator, "strict_json", key), what=f"{key} handled")
    time.sleep(0.5)  # a second event (the close after a half-way read) would be handled by now
    for folder in folders:
        key = str((folder / "use-case.json").relative_to(bucket))
        assert invocations(emulator, "strict_json", key) == [("succeeded", None)], key


def metric(client, name: str, labels: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{{{labels}}} in /metrics")


def test_files_dropped_while_down_are_listed_then_admitted_once_and_counted(tmp_path, run_cli, dropwire_env):
    """`dropwire bucket unadmitted` names the files no receipt covers; the start's
    reconciliation admits them, once each, and /metrics counts them."""
    settings = emulator_settings(tmp_path / "data")
    with Emulator(settings, serve_http=False):
        drop(settings.bucket_path / "incoming" / "seen.csv")
        wait_for(lambda: admitted_in(settings, "incoming/") == {"incoming/seen.csv": 1}, what="the first file")
    for name in ("a.csv", "b.csv", "sub/c.csv"):
        drop(settings.bucket_path / "incoming" / name)
    (settings.bucket_path / "nobody-watches.csv").write_text("x")
    env = {**dropwire_env, "DROPWIRE_DATA_DIR": str(settings.data_path), "DROPWIRE_FUNCTIONS": settings.functions}
    listed = run_cli("bucket", "unadmitted", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("3 file(s) in bucket local (") and lines[0].endswith(") have no receipt:")
    assert lines[1:] == [f"incoming/{k}  (for measure; 8 bytes)" for k in ("a.csv", "b.csv", "sub/c.csv")]

    emulator = Emulator(settings).start()
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{settings.http.port}", timeout=30)
        expected = {f"incoming/{k}": 1 for k in ("seen.csv", "a.csv", "b.csv", "sub/c.csv")}
        wait_for(lambda: admitted(emulator, "incoming/") == expected, what="the files dropped while down")
        assert metric(client, "dropwire_folder_recovered_total", 'reconciliation="start"') == 3
        assert metric(client, "dropwire_folder_recovered_total", 'reconciliation="periodic"') == 0
        after = run_cli("bucket", "unadmitted", env=env)  # through the running control plane
        assert after.returncode == 0, after.stderr
        assert after.stdout.startswith("every file in bucket local (") and "has a receipt" in after.stdout
        client.close()
    finally:
        emulator.stop()


def admitted_in(settings, prefix: str) -> dict[str, int]:
    with open_store(settings) as store:
        return admitted(store, prefix)


@pytest.fixture
def router(tmp_path):
    """The emulator's admission path on a real database, without its watcher: the router over
    the store's receipts, and the reconciler over its committed receipts."""
    settings = emulator_settings(tmp_path / "data")
    functions = load_functions(settings.functions)
    store = open_store(settings)
    yield (EventRouter(functions, store.receipts, store.queue, settings.events.hop_limit),
           Reconciler(functions, store.query, settings.events.bucket, tmp_path / "scratch"), store)
    store.close()


def test_events_that_cannot_be_routed_are_routed_again_not_dropped(router, tmp_path, caplog):
    """`_deliver` logged a failed route and forgot its events: those files were never processed."""
    route, reconciler, store = router
    failures = []

    def flaky(events):
        if len(failures) < 3:  # the store unreachable for a while
            failures.append(len(events))
            raise ConnectionError("the control plane does not answer")
        return route.route(events)

    bucket = tmp_path / "bucket"
    source = FolderSource(bucket, "local", flaky, unadmitted=reconciler.unadmitted, retry_seconds=0.05).start()
    try:
        with caplog.at_level(logging.ERROR, logger="dropwire.sources.folder"):
            drop(bucket / "incoming" / "first.csv")
            wait_for(lambda: failures, what="a failed route")
            drop(bucket / "incoming" / "second.csv")
            wait_for(lambda: admitted(store, "incoming/") == {"incoming/first.csv": 1, "incoming/second.csv": 1},
                     what=lambda: f"both files admitted after {len(failures)} failed route(s); "
                                  f"admitted {admitted(store, 'incoming/')}")
    finally:
        source.stop()
    assert len(failures) == 3
    assert "could not route 1 event(s)" in caplog.text and "kept, and routed again with backoff" in caplog.text


@pytest.mark.skipif(not CLOSE_EVENTS, reason="inotify's queue is Linux's")
def test_files_whose_events_the_kernel_dropped_are_reconciled_once_each(router, tmp_path):
    """While the watcher is held up routing, more events arrive than the kernel queues
    (fs.inotify.max_queued_events, 16384 by default): it drops the rest and says so. The
    reconciliation that follows admits what no receipt covers, and counts it."""
    route, reconciler, store = router
    gate = threading.Event()

    def slow(events):
        gate.wait(60)  # a store busy for a moment
        return route.route(events)

    bucket = tmp_path / "bucket"
    (bucket / "incoming" / "many").mkdir(parents=True)
    source = FolderSource(bucket, "local", slow, unadmitted=reconciler.unadmitted).start()
    try:
        drop(bucket / "incoming" / "first.csv")
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        count = limit // 2 + 1000  # a file makes two events: created, closed
        subprocess.run([sys.executable, "-c", "import sys\nfor i in range(int(sys.argv[2])):\n"
                        "    open(f'{sys.argv[1]}/f{i:06d}.csv', 'w').write('x')", str(bucket / "incoming" / "many"),
                        str(count)], check=True, timeout=120)
        gate.set()
        expected = {"incoming/first.csv", *(f"incoming/many/f{i:06d}.csv" for i in range(count))}
        wait_for(lambda: len(admitted(store, "incoming/")) == len(expected), timeout=120,
                 what=lambda: f"{len(expected)} files admitted; {len(admitted(store, 'incoming/'))} are")
    finally:
        source.stop()
    receipts = admitted(store, "incoming/")
    assert set(receipts) == expected and set(receipts.values()) == {1}
    assert source.recovered["overflow"] > 0


def test_a_change_the_watcher_is_not_told_of_is_admitted_by_the_periodic_reconciliation(start_emulator):
    """truncate(2) by path changes a file without opening it, so without a close or a rename
    (inotify reports only a modification, which says nothing of when it is complete): the
    watcher never emits it,
    as it never hears of a remote write on a network filesystem. The periodic
    reconciliation admits the new version, and /metrics counts it."""
    emulator, client = start_emulator(DROPWIRE_EVENTS__RECONCILE_SECONDS="0.3")
    path = emulator.settings.bucket_path / "incoming" / "grown.csv"
    drop(path)
    wait_for(lambda: admitted(emulator, "incoming/") == {"incoming/grown.csv": 1}, what="the dropped file")
    wait_for(lambda: emulator.store.query("SELECT 1 FROM invocations WHERE function = 'measure'"),
             what="the dropped file handled")  # before the change, so that it reads the first version
    os.truncate(path, 100)
    wait_for(lambda: admitted(emulator, "incoming/") == {"incoming/grown.csv": 2}, timeout=20,
             what="the grown file's version admitted")
    assert metric(client, "dropwire_folder_recovered_total", 'reconciliation="periodic"') == 1
    time.sleep(1)  # two more rounds: what is admitted stays admitted once
    assert admitted(emulator, "incoming/") == {"incoming/grown.csv": 2}
    wait_for(lambda: len(emulator.store.query("SELECT 1 FROM invocations WHERE function = 'measure'")) == 2,
             what="both versions handled")
    sizes = [row[0] for row in emulator.store.query(
        "SELECT json_extract(t.result, '$.bytes')::BIGINT FROM invocations i JOIN tasks t ON t.id = i.task_id "
        "WHERE i.function = 'measure' ORDER BY i.started_at")]
    assert sizes == [8, 100]


# The suite's size; the stress run sets 100 folders and 1000 files.
STRESS_FOLDERS = int(os.environ.get("DROPWIRE_STRESS_FOLDERS", "20"))
STRESS_FILES = int(os.environ.get("DROPWIRE_STRESS_FILES", "200"))


def files_in(root: Path) -> int:
    return sum(len([f for f in files if not f.startswith(".")]) for _, _, files in os.walk(root))


@pytest.mark.skipif(not CLOSE_EVENTS, reason="close-after-write events are Linux's")
def test_stress_every_file_dropped_any_way_is_admitted_once_and_read_whole(tmp_path):
    """Files in new nested folders, made in random order and timing (mkdir -p trees, renames,
    slow writes, folders built elsewhere and renamed in), with a restart in the middle: each
    file has one receipt and one successful read of the whole document."""
    seed = int(os.environ.get("DROPWIRE_STRESS_SEED", str(random.randrange(10**6))))
    settings = emulator_settings(tmp_path / "data")
    settings.bucket_path.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    manifest = tmp_path / "manifest.json"
    writer = subprocess.Popen([sys.executable, "-m", "tests.platform.folder_writer", str(settings.bucket_path),
                               str(tmp_path / "outside"), "json-in/stress", str(seed), str(STRESS_FOLDERS),
                               str(STRESS_FILES), str(manifest)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    emulator = Emulator(settings, serve_http=False).start()
    try:
        wait_for(lambda: files_in(settings.bucket_path) >= STRESS_FILES * 0.4 or writer.poll() is not None,
                 timeout=120, what="the writer to be part-way")
        emulator.stop()  # a restart in the middle, the writer going on
        emulator = Emulator(settings, serve_http=False).start()
        assert writer.wait(timeout=300) == 0, f"the writer failed (seed {seed})"
        sizes = json.loads(manifest.read_text())
        assert len(sizes) == STRESS_FILES

        def handled() -> int:
            return emulator.store.query("SELECT count(*) FROM invocations WHERE function = 'strict_json'")[0][0]

        wait_for(lambda: handled() >= STRESS_FILES, timeout=240,
                 what=lambda: f"{STRESS_FILES} files handled (seed {seed}); {handled()} are")
        time.sleep(0.5)  # a duplicate would be handled by now
        receipts = dict(emulator.store.query("SELECT \"key\", count(*) FROM object_receipts "
                                             "WHERE function = 'strict_json' GROUP BY \"key\""))
        outcomes = emulator.store.query("SELECT json_extract_string(event, '$.key'), outcome, error FROM invocations "
                                        "WHERE function = 'strict_json' ORDER BY 1")
    finally:
        writer.kill()
        emulator.stop()
    assert sorted(receipts) == sorted(sizes), f"seed {seed}"
    assert {k: n for k, n in receipts.items() if n != 1} == {}, f"seed {seed}: admitted more than once"
    assert [row for row in outcomes if row[1] != "succeeded"] == [], f"seed {seed}: read half-way"
    assert len(outcomes) == STRESS_FILES, f"seed {seed}"


# Saves a JSON file, then saves it again in place at once, in pieces over a second (as an
# editor that writes in place does): the first save's handler reads the second half-written.
SAVED_TWICE = """
import sys, time
path = sys.argv[1]
with open(path, "w") as out:
    out.write('{"version": 1}')
with open(path, "w") as out:
    for piece in ('{"version": 2, ', '"owner": "ops", ', '"metric": "f1", ', '"labels": []}'):
        out.write(piece)
        out.flush()
        time.sleep(0.25)
"""


def test_a_file_rewritten_while_its_handler_reads_it_is_read_again_not_failed(start_emulator):
    emulator, _ = start_emulator()
    folder = emulator.settings.bucket_path / "json-in"
    folder.mkdir(parents=True)
    key = "json-in/saved-twice.json"
    assert subprocess.run([sys.executable, "-c", SAVED_TWICE, str(folder / "saved-twice.json")], timeout=30).returncode == 0
    wait_for(lambda: len(invocations(emulator, "strict_json", key)) >= 2, what="both saves handled")
    time.sleep(0.5)
    assert invocations(emulator, "strict_json", key) == [("succeeded", None), ("succeeded", None)]


@pytest.mark.skipif(not CLOSE_EVENTS, reason="close-after-write events are Linux's")
def test_a_file_still_open_for_writing_is_not_taken_for_a_missed_one(router, tmp_path):
    """A writer that pauses longer than the periodic reconciliation's grace: the file has no
    receipt yet, but the watcher follows it; it fires once, at its close, and is no recovery."""
    route, reconciler, store = router
    bucket = tmp_path / "bucket"
    (bucket / "incoming").mkdir(parents=True)
    source = FolderSource(bucket, "local", route.route, unadmitted=reconciler.unadmitted, reconcile_seconds=0.2).start()
    try:
        with open(bucket / "incoming" / "slow.csv", "w") as out:
            out.write("a,b\n")
            out.flush()
            time.sleep(2.5)  # past the grace (1 s), through several reconciliations
            out.write("1,2\n")
        wait_for(lambda: admitted(store, "incoming/") == {"incoming/slow.csv": 1}, what="the file at its close")
        time.sleep(0.5)
    finally:
        source.stop()
    assert admitted(store, "incoming/") == {"incoming/slow.csv": 1}
    assert source.recovered["periodic"] == 0
