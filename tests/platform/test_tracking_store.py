"""The product's MLflow store is created on first use, not at start: handler processes that
open a new SQLite store at the same moment must not break its migration."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, SUBPROCESS_PYTHONPATH

pytestmark = pytest.mark.slow

OPEN_AND_LOG = """
import sys
from dropwire.functions.kit.tracking import tracking_client
client = tracking_client(sys.argv[1])
experiment = client.get_experiment_by_name("shared") or client.get_experiment(client.create_experiment("shared"))
print(client.create_run(experiment.experiment_id).info.run_id)
"""


def test_four_processes_opening_a_new_sqlite_store_at_once_all_log_their_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    env = {"PYTHONPATH": SUBPROCESS_PYTHONPATH, "PATH": "/usr/bin:/bin"}
    started = [subprocess.Popen([sys.executable, "-c", OPEN_AND_LOG, uri], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [(p.wait(timeout=240), p.stdout.read(), p.stderr.read()) for p in started]
    failed = [err for code, _, err in outcomes if code != 0]
    # One process may lose the race to create the experiment itself (MLflow's unique name), not the schema.
    assert not [err for err in failed if "already exists" not in err], "\n---\n".join(failed)
    assert len({out.strip() for code, out, _ in outcomes if code == 0}) == len(outcomes) - len(failed) >= 1
