"""On-demand mutation testing (`make mutate`, never part of `make test`): cosmic-ray mutates
storage/ and the platform's event path one change at a time and runs the tests that cover each
module; a mutant the tests do not notice "survives". Prints, per module, the share of mutants
killed and every survivor's diff.

Cosmic-ray edits the module it mutates on disk, so this runs on a copy of the tree (tracked
and untracked files, not ignored ones) in a temporary directory, never on yours; the copy's
modules are put first on the import path under their `dropwire.*` names.

    python -m tests.mutation                          # every module below, a sample of 40 each
    python -m tests.mutation --sample 0 storage/state_machine.py   # all its mutants
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

QUEUE_TESTS = ["tests/storage/test_queue.py", "tests/storage/test_leases_and_control.py"]
STATE_TESTS = ["tests/storage/test_state_machines.py"]
RECEIPT_TESTS = ["tests/platform/test_receipts.py", "tests/storage/test_receipts_durable.py", "tests/platform/test_schedules.py"]
# Each mutated module and the fast, in-process tests that cover it.
TARGETS: dict[str, list[str]] = {
    "storage/writer.py": [*QUEUE_TESTS, *STATE_TESTS, *RECEIPT_TESTS, "tests/platform/test_notifications.py"],
    "storage/states.py": [*STATE_TESTS, "tests/platform/test_notifications.py", "tests/storage/test_queue.py"],
    "storage/queue.py": QUEUE_TESTS,
    "storage/task_planning.py": [*QUEUE_TESTS, *RECEIPT_TESTS],
    "storage/receipts.py": [*RECEIPT_TESTS, "tests/platform/test_events_and_triggers.py"],
    "storage/outbox.py": ["tests/platform/test_notifications.py"],
    "storage/commit_group.py": [*QUEUE_TESTS, *STATE_TESTS],
    "storage/task_index.py": QUEUE_TESTS,
    "storage/state_machine.py": STATE_TESTS,
    "storage/migrate.py": ["tests/storage/test_migrations.py"],
    "local_emulator/router.py": ["tests/platform/test_receipts.py", "tests/platform/test_events_and_triggers.py"],
    "local_emulator/schedules.py": ["tests/platform/test_schedules.py"],
    "local_emulator/sources/folder.py": ["tests/platform/test_folder_source.py"],
    "local_emulator/sources/s3.py": ["tests/platform/test_s3_sqs.py", "tests/platform/test_events_and_triggers.py"],
    "functions/platform/objects.py": ["tests/platform/test_events_and_triggers.py", "tests/platform/test_handler_sandbox.py"],
}
PACKAGES = ("functions", "runtime", "storage", "local_emulator")


def copy_tree(target: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    shim = target / ".mutation-path" / "dropwire"
    shim.mkdir(parents=True)
    for package in PACKAGES:
        (shim / package).symlink_to(target / package, target_is_directory=True)


def write_config(path: Path, module: str, tests: list[str], timeout: float) -> None:
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {' '.join(tests)}"
    path.write_text(f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}\nexcluded-modules = []\n'
                    f'test-command = "{command}"\n\n[cosmic-ray.distributor]\nname = "local"\n')


def unevaluated_annotations(source: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where a module's function signatures and in-function annotations are: with
    `from __future__ import annotations` they are never evaluated, so a mutant there cannot be
    told apart (class-level ones stay: msgspec evaluates a Struct's field types)."""
    text = source.read_text()
    if "from __future__ import annotations" not in text:
        return []
    spans = []
    for function in (n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        args = function.args
        annotations = [function.returns, *(a.annotation for a in [*args.posonlyargs, *args.args, *args.kwonlyargs,
                                                                 args.vararg, args.kwarg] if a is not None)]
        annotations += [n.annotation for n in ast.walk(function) if isinstance(n, ast.AnnAssign)]
        spans += [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in annotations if a is not None]
    return spans


def keep_a_sample(session: Path, module: Path, size: int, seed: int) -> tuple[int, int, int]:
    """Skip the mutants inside unevaluated annotations, then all but `size` randomly chosen
    others; returns (all, in annotations, kept)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = unevaluated_annotations(module)
    with use_db(str(session), WorkDB.Mode.open) as db:
        found = list(db.pending_work_items)
        annotated = [item for item in found if any(start <= tuple(m.start_pos) < end for m in item.mutations for start, end in spans)]
        for item in annotated:
            db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="in an unevaluated annotation"))
        skipped = {item.job_id for item in annotated}
        # Job ids are random: order by where each mutant is, so a seed picks the same sample.
        items = sorted((item for item in found if item.job_id not in skipped),
                       key=lambda item: [(str(m.module_path), m.start_pos, m.operator_name, m.occurrence) for m in item.mutations])
        if size <= 0 or size >= len(items):
            return len(found), len(annotated), len(items)
        kept = set(item.job_id for item in random.Random(seed).sample(items, size))
        for item in items:
            if item.job_id not in kept:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in the sample"))
        return len(found), len(annotated), size


def outcomes(session: Path) -> tuple[Counter, list[str]]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    counts: Counter = Counter()
    survivors: list[str] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome == WorkerOutcome.ABNORMAL:
                counts["timeout"] += 1  # a mutant that hangs the tests is noticed
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                mutation = item.mutations[0]
                survivors.append(f"--- {mutation.module_path}:{mutation.start_pos[0]} {mutation.operator_name}\n{result.diff}")
            else:
                counts["killed"] += 1
    return counts, survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mutation testing (cosmic-ray) of storage/ and the event path, on a copy of the tree.")
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {list(TARGETS)})")
    parser.add_argument("--sample", type=int, default=40, help="mutants per module, chosen at random (0: all)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one test run may take")
    args = parser.parse_args(argv)
    modules = args.modules or list(TARGETS)
    unknown = [m for m in modules if m not in TARGETS]
    if unknown:
        print(f"error: no tests are mapped to {unknown}; known modules: {list(TARGETS)}", file=sys.stderr)
        return 1
    total: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="dropwire-mutate-") as temporary:
        tree = Path(temporary) / "tree"
        copy_tree(tree)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / ".mutation-path"), str(tree)])}
        for module in modules:
            config, session = Path(temporary) / "cr.toml", Path(temporary) / f"{module.replace('/', '_')}.sqlite"
            write_config(config, module, TARGETS[module], args.timeout)
            subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(session)], cwd=tree, env=env,
                           check=True)
            found, annotated, kept = keep_a_sample(session, tree / module, args.sample, args.seed)
            baseline = subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "baseline", str(config)], cwd=tree, env=env)
            if baseline.returncode != 0:
                print(f"error: the tests for {module} fail without any mutation; fix them first", file=sys.stderr)
                return 1
            subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "exec", str(config), str(session)], cwd=tree, env=env,
                           check=True)
            counts, survivors = outcomes(session)
            total += counts
            done = sum(counts.values())
            killed = counts["killed"] + counts["timeout"]
            print(f"\n{module}: {killed}/{done} mutants killed ({killed / max(done, 1):.0%}); "
                  f"{counts['timeout']} by a timeout; sampled {kept} of {found - annotated} "
                  f"({annotated} more in unevaluated annotations, not run)")
            for survivor in survivors:
                print(survivor)
    done = sum(total.values())
    killed = total["killed"] + total["timeout"]
    print(f"\nall modules: {killed}/{done} mutants killed ({killed / max(done, 1):.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
