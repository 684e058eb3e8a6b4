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


def s3_event_file(run_cli, env, path, bucket: str, key: str):
    printed = run_cli("events", "s3", "--bucket", bucket, "--key", key, env=env)
    assert printed.returncode == 0, printed.stderr
    path.write_text(printed.stdout)
    return str(path)


def test_invoke_refuses_an_event_the_functions_triggers_would_never_deliver(platform_env, data_dir, run_cli, tmp_path):
    """invoke commits for real, so an event the platform would never give the function is refused
    before the handler runs, naming the function, the event's bucket and what it watches."""
    (data_dir / "bucket" / "incoming").mkdir(parents=True)
    (data_dir / "bucket" / "incoming" / "a.csv").write_text("123")
    other_bucket = s3_event_file(run_cli, platform_env, tmp_path / "other.json", "archive", "incoming/a.csv")
    refused = run_cli("invoke", "measure", "--event", other_bucket, env=platform_env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr + refused.stdout
    assert refused.stderr.strip() == ("error: function 'measure' is not fired by ObjectCreated:Put on bucket 'archive', "
                                      "key 'incoming/a.csv': it watches bucket 'local', keys incoming/* (ObjectCreated:*)")
    other_prefix = s3_event_file(run_cli, platform_env, tmp_path / "prefix.json", "local", "incoming/a.csv")
    refused = run_cli("invoke", "broken", "--event", other_prefix, env=platform_env)
    assert refused.returncode == 1 and "it watches bucket 'local', keys broken/*" in refused.stderr
    assert not (data_dir / "bucket" / "measured").exists()  # nothing ran


def test_invoke_prints_one_line_for_a_refusal_and_the_traceback_only_for_a_crash(platform_env, data_dir, run_cli, tmp_path):
    catalog = {**platform_env, "DROPWIRE_FUNCTIONS": "dropwire.functions.catalog:functions"}
    key = "use-cases/invoices/use-case.json"
    (data_dir / "bucket" / "use-cases" / "invoices").mkdir(parents=True)
    (data_dir / "bucket" / key).write_text(json.dumps({"name": "Invoices", "team_email": "team@example.com"}))
    event = s3_event_file(run_cli, catalog, tmp_path / "use-case.json", "local", key)
    assert run_cli("invoke", "evaluation-use-case", "--event", event, env=catalog).returncode == 0
    # The second registration is refused on purpose (Refused): its message is the whole story.
    again = run_cli("invoke", "evaluation-use-case", "--event", event, env=catalog)
    assert again.returncode == 1 and "Traceback" not in again.stdout + again.stderr
    assert again.stderr.startswith("error: function 'evaluation-use-case' refused: use-cases/invoices/use-case.json: "
                                   "use case 'invoices' already exists")
    assert again.stdout == ""
    # A prerequisite not there yet: nothing waits in a one-off run, so it says to run it later.
    ghost = "use-cases/ghost/config.json"
    (data_dir / "bucket" / "use-cases" / "ghost").mkdir(parents=True)
    (data_dir / "bucket" / ghost).write_text(json.dumps({"use_case": "ghost", "fields": []}))
    early = run_cli("invoke", "evaluation-config", "--event",
                    s3_event_file(run_cli, catalog, tmp_path / "config.json", "local", ghost), env=catalog)
    assert early.returncode == 1 and "Traceback" not in early.stdout + early.stderr
    assert early.stderr.startswith("error: function 'evaluation-config' cannot run yet: use-cases/ghost/config.json: "
                                   "use_case 'ghost' does not exist; upload use-cases/ghost/use-case.json first")
    # A crash (any other exception) keeps its traceback, then the one error line.
    (data_dir / "bucket" / "broken").mkdir()
    (data_dir / "bucket" / "broken" / "x.csv").write_text("1")
    crashed = run_cli("invoke", "broken", "--event",
                      s3_event_file(run_cli, platform_env, tmp_path / "broken.json", "local", "broken/x.csv"), env=platform_env)
    assert crashed.returncode == 1 and "function 'broken' failed: ValueError: cannot handle broken/x.csv" in crashed.stderr
    assert "Traceback (most recent call last)" in crashed.stdout and 'raise ValueError(f"cannot handle' in crashed.stdout


def test_two_emulators_started_at_once_on_a_fresh_data_dir_one_line_for_the_loser(platform_env, data_dir, tmp_path):
    """The database lock is taken before the MLflow store is prepared, so the second emulator
    stops with the one-line "in use by process" instead of a migration traceback."""
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    errors = [tmp_path / "first.err", tmp_path / "second.err"]
    started = [subprocess.Popen([*DROPWIRE, "emulate"], env={**platform_env, "DROPWIRE_HTTP__PORT": str(free_port())},
                                cwd=REPO, stdout=log.open("w"), stderr=error.open("w"))
               for log, error in zip(logs, errors, strict=False)]
    try:
        loser = wait_for(lambda: next((p for p in started if p.poll() is not None), None), timeout=120,
                         what="one of the two emulators to give up")
        winner = next(p for p in started if p is not loser)
        wait_for(lambda: "dropwire is up" in logs[started.index(winner)].read_text(), timeout=120,
                 what="the other emulator to be up")
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        codes = [process.wait(timeout=60) for process in started]
    said = errors[started.index(loser)].read_text()
    assert loser.returncode == 1 and codes[started.index(winner)] == 0
    assert said.startswith(f"error: database {data_dir}/dropwire.duckdb is in use by process {winner.pid} ")
    assert len(said.strip().splitlines()) == 1 and "Traceback" not in said


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


def test_quota_usage_shows_the_limits_the_running_control_plane_has(platform_env, run_cli, tmp_path):
    """The CLI's own environment names no limits: what it shows is what the emulator runs
    with. The service batches are metered under answers before its first request."""
    log = tmp_path / "emulate.log"
    limits = {"batch-upstream": {"requests_per_minute": 60}, "other-upstream": {"requests_per_day": 1000}}
    emulator = subprocess.Popen([*DROPWIRE, "emulate"], env={**platform_env, "DROPWIRE_QUOTA__SERVICES": json.dumps(limits)},
                                cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "dropwire is up" in log.read_text(), timeout=60, what="the emulator to start")
        shown = {}
        for service in ("batch-upstream", "other-upstream"):
            result = run_cli("quota", "usage", service, env=platform_env)
            assert result.returncode == 0, result.stderr
            shown[service] = json.loads(result.stdout)
        assert [(u["name"], u["limit"], u["used"]) for u in shown["batch-upstream"]["limits"]] == [
            ("requests_per_minute", 60, 0)]
        assert [(u["name"], u["limit"]) for u in shown["other-upstream"]["limits"]] == [("requests_per_day", 1000)]
        assert shown["batch-upstream"]["requests_today"] == 0
        unknown = run_cli("quota", "usage", "nowhere", env=platform_env)
        assert unknown.returncode == 1
        assert "no metered service 'nowhere'; known: ['batch-upstream', 'other-upstream']" in unknown.stderr
    finally:
        emulator.send_signal(signal.SIGINT)
        assert emulator.wait(timeout=60) == 0, log.read_text()
    # Stopped: the file is read with the CLI's settings; the metered service is still known.
    stopped = run_cli("quota", "usage", "batch-upstream", env=platform_env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout)["limits"] == [] and json.loads(stopped.stdout)["requests_today"] == 0


@pytest.mark.parametrize("option, value, expected", [
    ("--chaos-duplicate", "2", "less than or equal to 1"), ("--chaos-reorder", "-0.5", "greater than or equal to 0"),
    ("--chaos-delay-ms", "-1", "greater than or equal to 0"),
])
def test_emulate_refuses_chaos_outside_its_range_naming_the_option(platform_env, data_dir, option, value, expected):
    process = subprocess.Popen([*DROPWIRE, "emulate", option, value], env=platform_env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
        pytest.fail(f"emulate {option} {value} started instead of refusing the value")
    assert process.returncode == 2, stderr
    assert f"Invalid value for '{option}'" in stderr and expected in stderr, stderr
    assert list(data_dir.iterdir()) == []  # nothing started


def test_chaos_settings_outside_their_range_are_refused_naming_the_field():
    from dropwire.local_emulator.emulator import ChaosSettings

    for field, value in (("duplicate", 2.0), ("reorder", -0.1), ("max_delay_seconds", -1.0)):
        with pytest.raises(ValueError, match=f"chaos {field} must be"):
            ChaosSettings(**{field: value})
