"""The platform's commands as a person runs them: real processes, real signals."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.conftest import DROPWIRE, REPO, wait_for
from tests.platform.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def platform_env(dropwire_env):
    return {**dropwire_env, "DROPWIRE_FUNCTIONS": "tests.platform.sample_functions:functions",
            "DROPWIRE_HTTP__PORT": str(free_port()), "DROPWIRE_QUEUE__WORKERS": "1"}


def test_emulate_handles_a_dropped_file_and_stops_cleanly_on_ctrl_c(platform_env, data_dir, run_cli, tmp_path):
    log = tmp_path / "emulate.log"
    emulator = subprocess.Popen([*DROPWIRE, "emulate"], env=platform_env, cwd=REPO, stdout=log.open("w"),
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "dropwire is up" in log.read_text(), timeout=60, what="the emulator to start")
        incoming = data_dir / "bucket" / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        (incoming / "a.csv").write_text("hello")
        wait_for(lambda: (data_dir / "bucket" / "measured" / "incoming" / "a.csv.txt").exists(), what="the handler output")
        # Tools reach the running emulator through its control socket.
        stats = json.loads(run_cli("queue", "stats", env=platform_env).stdout)
        wait_for(lambda: json.loads(run_cli("queue", "stats", env=platform_env).stdout)["by_name"].get("fn:measure")
                 == {"succeeded": 1}, what="the task to be recorded")
        assert stats["dead_letters"] == 0
        fired = run_cli("schedule", "run", "every-2s", env=platform_env)
        assert fired.returncode == 0 and "schedule every-2s fired" in fired.stdout
        again = run_cli("reprocess", "measure", "local", "incoming/a.csv", env=platform_env)
        assert again.returncode == 0 and "queued task" in again.stdout
        wait_for(lambda: "measure" in run_cli("db", "query", "SELECT function, count(*) FROM invocations GROUP BY ALL HAVING count(*) = 2",
                                              env=platform_env).stdout, what="the reprocessed run")
    finally:
        emulator.send_signal(signal.SIGINT)
        code = emulator.wait(timeout=60)
    assert code == 0, log.read_text()
    assert "emulator stopped" in log.read_text()
    assert "is consistent" in run_cli("db", "check", env=platform_env).stdout


def test_invoke_runs_one_handler_on_an_event_file(platform_env, data_dir, run_cli, tmp_path):
    (data_dir / "bucket" / "incoming").mkdir(parents=True)
    (data_dir / "bucket" / "incoming" / "b c.csv").write_text("12345")
    printed = run_cli("events", "s3", "--bucket", "local", "--key", "incoming/b c.csv", "--size", "5", env=platform_env)
    notification = json.loads(printed.stdout)
    record = notification["Records"][0]["s3"]["object"]
    assert record["key"] == "incoming/b+c.csv" and record["size"] == 5 and record["sequencer"]
    event_file = tmp_path / "event.json"
    event_file.write_text(printed.stdout)
    result = run_cli("invoke", "measure", "--event", str(event_file), env=platform_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"]["bytes"] == 5
    assert (data_dir / "bucket" / "measured" / "incoming" / "b c.csv.txt").read_text() == "5\n"
    broken = run_cli("invoke", "broken", "--event", str(event_file), env=platform_env)
    assert broken.returncode == 1 and "function 'broken' failed: ValueError" in broken.stderr


def test_emulate_chaos_flags_duplicate_and_delay_events_and_receipts_absorb_them(platform_env, data_dir, run_cli, tmp_path):
    log = tmp_path / "emulate.log"
    emulator = subprocess.Popen([*DROPWIRE, "emulate", "--chaos-duplicate", "1", "--chaos-reorder", "0.5",
                                 "--chaos-delay-ms", "200", "--chaos-seed", "5"],
                                env=platform_env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "dropwire is up" in log.read_text(), timeout=60, what="the emulator to start")
        incoming = data_dir / "bucket" / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        for name in ("a.csv", "b.csv", "c.csv"):
            (incoming / name).write_text(name)
        # Every event arrives twice (--chaos-duplicate 1): each second copy is refused as a duplicate.
        wait_for(lambda: sorted(line.split(" not queued for ")[0].split()[-1] for line in log.read_text().splitlines()
                                if " not queued for measure: duplicate " in line)
                 == ["local/incoming/a.csv", "local/incoming/b.csv", "local/incoming/c.csv"], what="three refused duplicates")
        wait_for(lambda: "handled=3" in run_cli("db", "query", "SELECT 'handled=' || count(*) FROM invocations "
                                                               "WHERE function = 'measure' AND outcome = 'succeeded'",
                                                       env=platform_env).stdout, what="three handled uploads")
    finally:
        emulator.send_signal(signal.SIGINT)
        code = emulator.wait(timeout=60)
    assert code == 0, log.read_text()
