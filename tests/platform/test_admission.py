"""Admitting object events through the whole emulator: task ids are never reused (not after
`dropwire queue cleanup`, not across restarts), a catch-up after a cleanup admits what is new
and knows what was done, and a source that cannot admit events says so in /health and
/metrics (real emulator, real files, the real CLI, real DuckDB files)."""

from __future__ import annotations

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
