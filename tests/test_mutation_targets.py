"""`make mutate` names modules and test files by path: after a refactor they must still exist."""

from __future__ import annotations

from tests.mutation import REPO, TARGETS


def test_every_mutated_module_and_its_tests_exist():
    missing = sorted(path for module, tests in TARGETS.items() for path in [module, *tests] if not (REPO / path).is_file())
    assert missing == []
    assert {"storage/writer.py", "storage/states.py", "storage/queue.py", "storage/task_planning.py", "storage/receipts.py",
            "storage/outbox.py", "storage/commit_group.py", "storage/state_machine.py", "storage/migrate.py",
            "local_emulator/router.py"} <= set(TARGETS)
