"""What the list commands print on an 80-column terminal: the real CLI in a subprocess against
a running emulator's real data (a batch run on a loopback upstream, a use case's notification,
dead letters with long errors). Ids, paths and commands are never cut or broken across lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dropwire.functions.machines import MACHINES
from dropwire.local_emulator.emulator import Emulator
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store
from tests.batches.conftest import batch_env, jsonl
from tests.batches.upstream import Upstream, chat_line
from tests.conftest import DROPWIRE, REPO, SUBPROCESS_PYTHONPATH, wait_for
from tests.platform.conftest import emulator_settings

pytestmark = pytest.mark.slow

USE_CASE = "invoice-extraction-for-the-finance-team"
DEAD_TASK = "evaluation-quality-check-by-hand"
DEAD_KEY = f"use-cases/{USE_CASE}/models/gpt-4o-2024-08-06/dataset.csv"
DEAD_ERROR = (f"{DEAD_KEY}: the quality check could not read the file: column 'total_amount' holds 'twelve' on row "
              "4817, expected a number with at most 2 decimals; fix the file and drop it again")


class Listed:
    """The commands' environment and the ids their output must show whole."""

    def __init__(self, query: Callable[[str], list[tuple]]) -> None:
        self.rows: dict[str, list[tuple]] = {sql: query(sql) for sql in QUERIES}
        self.env: dict[str, str] = {}

    def cli(self, *args: str, columns: int = 80) -> str:
        ran = subprocess.run([*DROPWIRE, *args], env={**self.env, "COLUMNS": str(columns)}, cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        return ran.stdout

    def ids(self, sql: str) -> list[str]:
        return [str(value) for row in self.rows[sql] for value in row if value]


@pytest.fixture(scope="module")
def listed(tmp_path_factory) -> Iterator[Listed]:
    upstream = Upstream().start()
    data_dir = tmp_path_factory.mktemp("cli-output") / "data"
    emulator = Emulator(emulator_settings(data_dir, **batch_env(upstream))).start()
    try:
        bucket = emulator.settings.bucket_path
        drop(bucket, "batches/nightly-invoice-summaries-for-the-finance-team.jsonl",
             jsonl([chat_line(f"req-{i}", f"summarise invoice {i}") for i in range(3)] + [chat_line("req-3", "fail")]))
        drop(bucket, f"use-cases/{USE_CASE}/use-case.json",
             json.dumps({"name": "Invoice extraction", "team_email": "ml@example.com"}).encode())
        store = emulator.store
        wait_for(lambda: store.query("SELECT count(*) FROM batches WHERE output_file_id IS NOT NULL")[0][0] == 1
                 and store.query("SELECT count(*) FROM notifications WHERE kind = 'template_sent'")[0][0] == 1,
                 timeout=60, what="the batch's output and the use case's template notification")
    finally:
        emulator.stop()
        upstream.stop()
    # Dead letters with the errors handlers write (a path, then what is wrong and what to do),
    # by the queue's own calls on the stopped database; the commands then read the file.
    with Store.open(emulator.settings.database_path, MACHINES) as store:
        for error in (DEAD_ERROR, "ConnectionError: the metrics store at http://127.0.0.1:5000 is unreachable"):
            task_id = store.queue.enqueue(TaskSpec(name=DEAD_TASK, max_attempts=1))
            claimed = store.queue.claim("operator", names=[DEAD_TASK])[0]
            assert claimed.id == task_id
            store.queue.fail(task_id, claimed.token, error=error)
        listed = Listed(store.query)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWIRE_")}
    env.update(DROPWIRE_DATA_DIR=str(data_dir), DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
               PYTHONPATH=SUBPROCESS_PYTHONPATH)
    listed.env = env
    yield listed


def drop(bucket: Path, key: str, content: bytes) -> None:
    path = bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(f".{path.name}.part").write_bytes(content)
    os.replace(path.with_name(f".{path.name}.part"), path)


def assert_whole(printed: str, wanted: list[str], width: int = 80) -> None:
    """Each of `wanted` on one line; nothing cut (no ellipsis); a line past the width only
    where it carries one of them whole (the terminal wraps it; a copy takes it whole)."""
    lines = printed.splitlines()
    assert wanted, "nothing to look for"
    for token in wanted:
        assert any(token in line for line in lines), f"{token!r} is not whole on one line:\n{printed}"
    assert "…" not in printed, printed
    for line in lines:
        assert len(line) <= width or any(token in line for token in wanted), f"line past {width} columns:\n{line}"


BATCH_IDS = "SELECT id, output_file_id, error_file_id FROM batches"
WORKERS = "SELECT DISTINCT worker, batch_id FROM batch_worker_heartbeats"
NOTIFIED = "SELECT entity_kind || '/' || entity_id, kind FROM notifications"
FILES = "SELECT id, input_file_id, output_file_id, endpoint FROM batches"
QUERIES = (BATCH_IDS, WORKERS, NOTIFIED, FILES)

LISTS: dict[str, tuple[tuple[str, ...], Callable[[Listed], list[str]]]] = {
    "batches list": (("batches", "list"), lambda data: [*data.ids(BATCH_IDS), "/v1/chat/completions", "4 total, 3 completed, 1 failed"]),
    "batches workers": (("batches", "workers"), lambda data: data.ids(WORKERS)),
    "batches benchmarks": (("batches", "benchmarks"), lambda data: [*data.ids(BATCH_IDS)[:1], "echo-1"]),
    "batches benchmarks --by model": (("batches", "benchmarks", "--by", "model"), lambda data: ["echo-1"]),
    "dlq list": (("dlq", "list"), lambda data: [DEAD_KEY, "http://127.0.0.1:5000", DEAD_TASK]),
    "notifications list": (("notifications", "list"), lambda data: [*data.ids(NOTIFIED), "status", "attempts"]),
    "workflow status": (("workflow", "status"), lambda data: ["use_case", USE_CASE, "AWAITING_CONFIG"]),
    "db query": (("db", "query", FILES), lambda data: data.ids(FILES)),
    "schedule list": (("schedule", "list"), lambda data: ["training-analysis-knowledge-version", "training-analysis-reanalyse",
                                                          "batches-remove-files"]),
}


@pytest.mark.parametrize("name", LISTS)
def test_a_list_at_80_columns_shows_every_id_whole_on_one_line(listed, name):
    args, wanted = LISTS[name]
    assert_whole(listed.cli(*args), wanted(listed))


def test_at_120_columns_a_list_that_fits_is_a_table_with_its_headers_and_nothing_cut(listed):
    printed = listed.cli("workflow", "status", columns=120)
    header = next(line for line in printed.splitlines() if "oldest waiting" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == ["kind", "oldest waiting", "state", "waiting s", "by state"]
    row = next(line for line in printed.splitlines() if USE_CASE in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]][:3] == ["use_case", USE_CASE, "AWAITING_CONFIG"]
    assert_whole(printed, [USE_CASE, "partially_processed 1"], width=120)


def test_the_demos_suggested_commands_print_whole_at_80_columns_and_run_as_printed(listed, tmp_path):
    from dropwire.local_emulator import cli_context
    from dropwire.local_emulator.demo import look_further, print_look_further
    from dropwire.local_emulator.settings import load_settings

    settings = load_settings(environ=listed.env)
    console, width = cli_context.console, cli_context.console.width
    console.width = 80  # the CLI's own console, as `dropwire demo` prints on an 80-column terminal
    try:
        with console.capture() as captured:
            print_look_further(settings, USE_CASE, console)
    finally:
        console.width = width
    printed = [line.strip().split("  # ")[0] for line in captured.get().splitlines()[1:]]
    suggested = [command for command, _ in look_further(settings, USE_CASE)]
    assert printed == suggested, captured.get()
    # Each runs as printed, from a shell with the venv's bin on PATH (`source .venv/bin/activate`);
    # the long-running servers are asked for their --help instead.
    shell = {**listed.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "80"}
    for command in suggested:
        server = command.startswith(("dropwire emulate", "mlflow ui"))
        ran = subprocess.run(["bash", "-c", " ".join(command.split()[:2]) + " --help" if server else command], env=shell,
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        if command.startswith("dropwire db query"):
            assert_whole(ran.stdout, [USE_CASE, "AWAITING_CONFIG"])
