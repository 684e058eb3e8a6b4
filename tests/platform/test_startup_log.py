"""What an operator reads at the default log level: one start of `dropwire emulate` on the
product's functions, and one file's journey through it. Only lines an operator acts on."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest

from tests.conftest import DROPWIRE, REPO, wait_for
from tests.platform.conftest import free_port

pytestmark = pytest.mark.slow

# Lines that tell an operator nothing to act on: a library's debug line (bm25s sets its own
# logger to DEBUG), each HTTP request of a client library, botocore's credential chatter, and
# an output file of a handler that no function watches (it is where it was written to be).
NOISE = [re.compile(p) for p in (r"^DEBUG ", r"^\w+ bm25s:", r"^INFO httpx", r"HTTP Request:", r"botocore",
                                 r"no function watches .*evaluation-templates/")]


def test_the_default_log_of_a_start_and_a_file_journey_holds_only_what_an_operator_acts_on(dropwire_env, data_dir,
                                                                                         tmp_path):
    env = {**dropwire_env, "DROPWIRE_HTTP__PORT": str(free_port()), "DROPWIRE_QUEUE__WORKERS": "1"}
    log = tmp_path / "emulate.log"
    emulator = subprocess.Popen([*DROPWIRE, "emulate"], env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "dropwire is up" in log.read_text(), timeout=90, what="the emulator to start")
        # The second use case's template is written after the first one's event was routed
        # (one folder source, events in order): its wait covers the first output's journey.
        for use_case in ("invoices", "receipts"):
            folder = data_dir / "bucket" / "use-cases" / use_case
            folder.mkdir(parents=True)
            hidden = folder / ".use-case.json.part"  # the README's safe way: write hidden, rename in
            hidden.write_text(json.dumps({"name": use_case, "team_email": "team@example.com"}))
            hidden.rename(folder / "use-case.json")
            template = data_dir / "bucket" / "evaluation-templates" / use_case / "config-template.yaml"
            wait_for(template.exists, timeout=90, what=lambda: f"the config template; the log so far:\n{log.read_text()}")
    finally:
        emulator.send_signal(signal.SIGINT)
        code = emulator.wait(timeout=60)
    lines = log.read_text().splitlines()
    assert code == 0, "\n".join(lines)
    noisy = [line for line in lines if any(p.search(line) for p in NOISE)]
    assert not noisy, "lines at the default level that an operator cannot act on:\n" + "\n".join(noisy)
    # Start-up says what it loads before it is up, in one line, so a slow start is not silence.
    up = next(i for i, line in enumerate(lines) if "emulator up" in line)
    assert any("starting:" in line for line in lines[:up]), "\n".join(lines)

