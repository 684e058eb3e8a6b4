"""Object receipts and the invocations they admit commit in one transaction, and survive a
restart (real DuckDB files, a real process killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from dropwire.storage.store import Store
from tests.conftest import REPO, SUBPROCESS_PYTHONPATH
from tests.storage.admit_forever import offer

ORPHANS = {
    "receipts without their task": 'SELECT count(*) FROM object_receipts r ANTI JOIN tasks t ON t.id = r.task_id',
    "object tasks without their receipt": "SELECT count(*) FROM tasks t WHERE t.name LIKE 'fn:%' AND NOT EXISTS "
                                          "(SELECT 1 FROM object_receipts r WHERE r.task_id = t.id)",
}


def test_receipts_and_their_tasks_survive_a_restart_and_still_refuse_duplicates_and_stale_events(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path) as store:
        first = store.receipts.admit([offer("a", "incoming/x.csv", 2), offer("b", "incoming/x.csv", 2)])
        assert [a.outcome for a in first] == ["accepted", "accepted"]
    with Store.open(path) as store:
        again = store.receipts.admit([offer("a", "incoming/x.csv", 2), offer("a", "incoming/x.csv", 1), offer("a", "incoming/x.csv", 3)])
        assert [a.outcome for a in again] == ["duplicate", "stale", "accepted"]
        assert again[0].task_id == first[0].task_id
        assert store.queue.task(first[0].task_id).args == {"key": "incoming/x.csv", "version": 2}
        assert {name: store.query(sql)[0][0] for name, sql in ORPHANS.items()} == {name: 0 for name in ORPHANS}


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_kill_during_admissions_never_leaves_a_receipt_without_its_task_or_the_reverse(tmp_path):
    path = tmp_path / "crash.duckdb"
    writer = subprocess.Popen([sys.executable, "-m", "tests.storage.admit_forever", str(path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SUBPROCESS_PYTHONPATH})
    try:
        for _ in range(4):  # a few hundred admissions committed, more under way
            assert writer.stdout.readline().startswith("admitted"), "the admitting process stopped early"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
    with Store.open(path) as store:
        receipts = store.query("SELECT count(*) FROM object_receipts")[0][0]
        assert receipts >= 3 * 50 * 2  # at least the ones reported
        assert {name: store.query(sql)[0][0] for name, sql in ORPHANS.items()} == {name: 0 for name in ORPHANS}
