"""Admitting object events through the whole emulator: task ids are never reused (not after
`dropwire queue cleanup`, not across restarts), a catch-up after a cleanup admits what is new
and knows what was done, and a source that cannot admit events says so in /health and
/metrics (real emulator, real files, the real CLI, real DuckDB files)."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from dropwire.local_emulator.emulator import Emulator
from tests.conftest import unfinished_tasks, wait_for
from tests.platform.conftest import emulator_settings

pytestmark = pytest.mark.slow


def succeeded(emulator, key: str) -> int:
    return emulator.store.query("SELECT count(*) FROM invocations WHERE function = 'measure' AND outcome = 'succeeded' "
                                "AND json_extract_string(event, '$.key') = ?", [key])[0][0]


def measure_task_ids(emulator) -> dict[str, list[int]]:
    rows = emulator.store.query("SELECT json_extract_string(event, '$.key'), task_id FROM invocations "
                                "WHERE function = 'measure' ORDER BY task_id")
    found: dict[str, list[int]] = {}
    for key, task_id in rows:
        found.setdefault(key, []).append(task_id)
    return found


def test_after_queue_cleanup_ids_are_not_reused_and_the_catch_up_admits_what_arrived_while_down(data_dir, dropwire_env,
                                                                                             run_cli):
    settings = emulator_settings(data_dir)
    incoming = settings.bucket_path / "incoming"
    incoming.mkdir(parents=True)
    with Emulator(settings) as emulator:
        for name in ("a.csv", "b.csv"):
            (incoming / name).write_text(name)
        wait_for(lambda: succeeded(emulator, "incoming/a.csv") and succeeded(emulator, "incoming/b.csv"),
                 what=lambda: f"the first two files to be handled; unfinished: {unfinished_tasks(emulator.store.query)}")
        used_before = emulator.store.query("SELECT max(id) FROM tasks")[0][0]

    cleaned = run_cli("queue", "cleanup", "--older-than-days", "0", env={**dropwire_env, **_functions_env()})
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed" in cleaned.stdout

    for name in ("c.csv", "d.csv", "e.csv"):  # dropped while nobody watched
        (incoming / name).write_text(name * 2)
    for _ in range(2):  # the catch-up held on every later start, not only the first
        with Emulator(emulator_settings(data_dir)) as emulator:
            wait_for(lambda: all(succeeded(emulator, f"incoming/{n}") for n in ("c.csv", "d.csv", "e.csv")),
                     what=lambda: f"the files dropped while down to be handled; unfinished: "
                                  f"{unfinished_tasks(emulator.store.query)}")
            (incoming / "f.csv").write_text("after the restart")
            wait_for(lambda: succeeded(emulator, "incoming/f.csv"), what="an upload after the restart to be handled")
            ids = measure_task_ids(emulator)
            # The first two ran once, before the cleanup; nothing that came later got their ids.
            assert len(ids["incoming/a.csv"]) == len(ids["incoming/b.csv"]) == 1
            later = [i for key, found in ids.items() if key not in ("incoming/a.csv", "incoming/b.csv") for i in found]
            assert min(later) > used_before, ids
            assert len(set(later)) == len(later), ids
        (incoming / "f.csv").unlink()  # the next start's own new upload


def _functions_env() -> dict[str, str]:
    return {"DROPWIRE_FUNCTIONS": "tests.platform.sample_functions:functions"}


def metric(http, line_start: str) -> float | None:
    for line in http.get("/metrics", headers=TOKEN).text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


TOKEN = {"Authorization": "Bearer s3cret"}


def test_a_file_that_cannot_be_admitted_holds_up_no_other_and_shows_in_health_and_metrics(data_dir):
    """A file whose name is not UTF-8 among files dropped while the emulator was down: the
    catch-up routes them together; the others are handled, the one is named in /health
    (503 source_degraded; its key only to a caller with a token) and counted in /metrics
    until it is renamed."""
    settings = emulator_settings(data_dir, DROPWIRE_HTTP__API_TOKENS='["s3cret"]')
    incoming = settings.bucket_path / "incoming"
    incoming.mkdir(parents=True)
    for name in (b"1.csv", b"bad\xff.csv", b"2.csv"):
        with open(os.path.join(bytes(incoming), name), "wb") as file:
            file.write(b"x")

    with Emulator(settings) as emulator, httpx.Client(base_url=f"http://127.0.0.1:{settings.http.port}") as http:
        wait_for(lambda: succeeded(emulator, "incoming/1.csv") and succeeded(emulator, "incoming/2.csv"),
                 what=lambda: f"the good files to be handled; unfinished: {unfinished_tasks(emulator.store.query)}")
        wait_for(lambda: http.get("/health").status_code == 503, what="/health to say degraded")
        anyone = http.get("/health").json()
        assert anyone["error"] == "source_degraded" and "folder: 1 event(s) not admitted since" in anyone["message"]
        (source,) = anyone["details"]["sources"]
        assert (source["source"], source["not_admitted"], source["failures"]) == ("folder", 1, 1)
        assert "events" not in source and "bad" not in json.dumps(anyone)  # open to anyone: no keys
        (event,) = http.get("/health", headers=TOKEN).json()["details"]["sources"][0]["events"]
        assert event["key"] == "incoming/bad\\xff.csv" and "is not UTF-8" in event["error"]
        assert metric(http, 'dropwire_events_not_admitted{source="folder"}') == 1
        assert metric(http, 'dropwire_event_admission_failures_total{source="folder"}') == 1

        os.rename(os.path.join(bytes(incoming), b"bad\xff.csv"), incoming / "renamed.csv")
        wait_for(lambda: succeeded(emulator, "incoming/renamed.csv"), what="the renamed file to be handled")
        wait_for(lambda: http.get("/health").status_code == 200, what="/health to be ok again")
        assert http.get("/health").json() == {"status": "ok"}
        assert metric(http, 'dropwire_events_not_admitted{source="folder"}') == 0
        assert metric(http, 'dropwire_event_admission_failures_total{source="folder"}') == 1
