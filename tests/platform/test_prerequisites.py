"""Files that arrive together, in any order, and what a user's mistake leaves: a real emulator
serving the product's catalog, real files renamed into its bucket folder, real HTTP."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from tests.conftest import unfinished_tasks, wait_for
from tests.evaluation.conftest import FIELDS, GOOD_ROWS, HEADER
from tests.platform.test_evaluation_flow import csv, drop, reach

pytestmark = pytest.mark.slow

# A use case's files, as the README lays them out (paths under use-cases/<use case>/).
FILES = ("use-case.json", "config.json", "models/m1/register.json", "models/m1/dataset.csv")


def _content(use_case: str, name: str) -> str:
    return {
        "use-case.json": json.dumps({"name": use_case, "team_email": "team@example.com"}),
        "config.json": json.dumps({"use_case": use_case, "fields": FIELDS}),
        "models/m1/register.json": json.dumps({"name": "m1", "version": "1"}),
        "models/m1/dataset.csv": csv([HEADER, *GOOD_ROWS]),
    }[name]


def _outcome(emulator, use_case: str) -> tuple:
    """Where a use case and its model ended, with the triggers that took them there."""
    def of(kind: str, entity_id: str) -> tuple[str | None, list[str]]:
        rows = emulator.store.query('SELECT to_state, "trigger" FROM state_history WHERE kind = ? AND entity_id = ? '
                                    "ORDER BY seq", [kind, entity_id])
        return (rows[-1][0] if rows else None), [trigger for _, trigger in rows]

    return of("use_case", use_case), of("model", f"{use_case}/m1")


def _uploads(emulator) -> int:
    return emulator.store.query("SELECT count(*) FROM tasks WHERE name IN ('fn:evaluation-use-case', "
                                "'fn:evaluation-config', 'fn:evaluation-model', 'fn:evaluation-dataset')")[0][0]


def _idle(emulator) -> bool:
    stats = emulator.store.queue.stats().by_status
    return not set(stats) - {"succeeded", "dead", "refused"}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2])
def test_every_order_of_a_use_cases_files_dropped_at_once_ends_as_one_by_one(start_emulator, tmp_path, workers):
    # All 24 orders in one running emulator, each its own use case, every file renamed in back
    # to back: the full set (not a sample) runs in about a minute, since the orders share
    # the emulator's start and their evaluations run side by side.
    orders = list(itertools.permutations(FILES))
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                                    DROPWIRE_QUEUE__WORKERS=str(workers))
    bucket: Path = emulator.settings.bucket_path

    # One by one, each file handled before the next is dropped: what every order must end as.
    for handled, name in enumerate(FILES, start=1):
        drop(bucket, f"use-cases/base/{name}", _content("base", name))
        wait_for(lambda handled=handled: _uploads(emulator) == handled and _idle(emulator), timeout=90,
                 what=lambda name=name: f"{name} to be handled: {unfinished_tasks(emulator.store.query)}")
    reach(emulator, "model", "base/m1", "EVALUATION_COMPLETED")
    expected = _outcome(emulator, "base")

    # Built elsewhere, then renamed in, every file of every order back to back. The folders
    # exist first, so what is tested is the order of the files, not new folders appearing.
    staging = tmp_path / "staging"
    moves = []
    for number, order in enumerate(orders):
        use_case = f"order{number:02d}"
        for name in order:
            staged = staging / use_case / name
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(_content(use_case, name))
            (bucket / "use-cases" / use_case / name).parent.mkdir(parents=True, exist_ok=True)
            moves.append((staged, bucket / "use-cases" / use_case / name))
    # And the README's way to drop a whole directory: build it elsewhere, rename it in.
    whole = staging / "whole"
    for name in FILES:
        (whole / name).parent.mkdir(parents=True, exist_ok=True)
        (whole / name).write_text(_content("whole", name))
    wait_for(lambda: _idle(emulator), what="the new folders to be seen")
    for staged, target in moves:
        os.replace(staged, target)
    os.replace(whole, bucket / "use-cases" / "whole")

    # Every file admitted (one task each) and nothing left to run: the steps an upload queues
    # commit with its success, so an idle queue then has nothing more coming.
    uploads = len(FILES) * (len(orders) + 2)
    wait_for(lambda: _uploads(emulator) >= uploads and _idle(emulator), timeout=400, what=lambda: f"every order to settle: {unfinished_tasks(emulator.store.query)}")
    ended = {f"order{number:02d}": _outcome(emulator, f"order{number:02d}") for number in range(len(orders))}
    differing = {use_case: (orders[int(use_case[5:])], got) for use_case, got in ended.items() if got != expected}
    if _outcome(emulator, "whole") != expected:
        differing["whole"] = ("the directory renamed in", _outcome(emulator, "whole"))
    assert not differing, f"expected {expected}; differing: {differing}"
    assert http.get("/dead-letters").json() == []
    assert emulator.store.query("SELECT count(*) FROM tasks WHERE status <> 'succeeded'")[0][0] == 0


def test_user_refusals_are_recorded_and_shown_but_never_dead_lettered(start_emulator, run_cli, dropwire_env):
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                                    DROPWIRE_QUEUE__WAIT_MAX_SECONDS="3")
    bucket: Path = emulator.settings.bucket_path
    for handled, name in enumerate(FILES[:3], start=1):
        drop(bucket, f"use-cases/shop/{name}", _content("shop", name))
        wait_for(lambda handled=handled: _uploads(emulator) == handled and _idle(emulator), what=f"{name} to be handled")
    assert (emulator.store.states.current("use_case", "shop")[0], emulator.store.states.current("model", "shop/m1")[0]) == (
        "CONFIG_VALIDATED", "REGISTERED")

    # A retry in the wrong state: refused with the handler's message, over the gateway and the API.
    retried = http.post("/functions/evaluation-retry/invoke", params={"wait": 30}, json={"use_case": "shop", "model": "m1"})
    assert retried.status_code == 409 and retried.json()["error"] == "refused_by_handler", retried.text
    wrong_state = "evaluation-retry: model 'shop/m1' is REGISTERED; this step runs only in EVALUATION_FAILED"
    assert retried.json()["message"] == f"function 'evaluation-retry' refused it: {wrong_state}"
    api = http.post("/api/use-cases/shop/models/m1/retry", params={"wait": 30})
    assert api.status_code == 409 and api.json()["error"] == "refused_by_handler", api.text
    assert api.json()["message"] == wrong_state and "dead_letter" not in api.json()["details"]

    # An upload in the wrong state: the use case is registered once.
    drop(bucket, "use-cases/shop/use-case.json", json.dumps({"name": "Shop again", "team_email": "team@example.com"}))
    # A prerequisite that never comes: visible as waiting, with why, then refused with the
    # same message once queue.wait_max_seconds have passed.
    drop(bucket, "use-cases/ghost/config.json", _content("ghost", "config.json"))
    missing = "use-cases/ghost/config.json: use_case 'ghost' does not exist; upload use-cases/ghost/use-case.json first"
    task = wait_for(lambda: http.get("/tasks/stats").json()["by_status"].get("waiting") and emulator.store.query(
        "SELECT id FROM tasks WHERE status = 'waiting'"), what="the ghost config to wait")[0][0]
    waiting = http.get(f"/tasks/{task}").json()
    assert (waiting["status"], waiting["last_error"]) == ("waiting", missing)
    wait_for(lambda: http.get(f"/tasks/{task}").json()["status"] == "refused", timeout=30,
             what=lambda: f"the ghost config to be refused: {http.get(f'/tasks/{task}').json()}")
    assert http.get(f"/tasks/{task}").json()["last_error"].startswith(missing + " (waited ")
    wait_for(lambda: _uploads(emulator) == 5 and _idle(emulator), what="every upload to be handled")

    # No dead letter; each refusal is in the invocations, with its message.
    assert http.get("/dead-letters").json() == [] and http.get("/tasks/stats").json()["dead_letters"] == 0
    refused = http.get("/invocations", params={"outcome": "refused"}).json()
    assert sorted(row["function"] for row in refused) == ["evaluation-config", "evaluation-retry", "evaluation-retry",
                                                          "evaluation-use-case"]
    refusals = {row["function"]: row["error"] for row in refused}
    assert refusals == {
        "evaluation-retry": wrong_state,
        "evaluation-use-case": "use-cases/shop/use-case.json: use case 'shop' already exists (state CONFIG_VALIDATED); "
                               "a use case is registered once",
        "evaluation-config": http.get(f"/tasks/{task}").json()["last_error"],
    }
    assert {row["outcome"] for row in http.get("/invocations", params={"function": "evaluation-config"}).json()} >= {
        "waiting", "refused", "succeeded"}

    # The CLI, at 80 columns, against the running emulator: no dead letters; every refusal
    # with its whole message (paths and commands never cut).
    env = {**dropwire_env, "DROPWIRE_DATA_DIR": str(emulator.settings.data_dir), "COLUMNS": "80"}
    assert run_cli("dlq", "list", env=env).stdout.strip() == "no dead letters"
    shown = run_cli("queue", "invocations", "--outcome", "refused", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    for message in refusals.values():
        assert f"  {message}" in lines, shown.stdout
    assert sum("  refused  " in line for line in lines) == 4, shown.stdout  # the retry was refused twice
