"""One real Label Studio server per test session (`label-studio start` from its own venv,
.venv-labelstudio, which `make test` builds): on 127.0.0.1 and a free port, a fresh data dir,
a user made at start with a known legacy API token, ready once /health answers and the token
is accepted. Tests that need it skip, saying why, only when that venv is absent (a run outside
`make test`)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, wait_for
from tests.platform.conftest import free_port

LABEL_STUDIO = Path(os.environ.get("DROPWIRE_TEST_LABEL_STUDIO", REPO / ".venv-labelstudio" / "bin" / "label-studio"))
START_TIMEOUT_S = 300  # first start migrates a fresh SQLite database: ~30 s here, more on a loaded box


@dataclass
class LabelStudioServer:
    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def api(self) -> httpx.Client:
        """Label Studio's own REST API, as a reviewer's tool would use it."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=30)

    def ready(self) -> bool:
        assert self.process.poll() is None, f"Label Studio exited ({self.process.returncode}); see {self.log}"
        try:
            with self.api() as api:
                return api.get("/health").status_code == 200 and api.get("/api/projects").status_code == 200
        except httpx.TransportError:
            return False

    def project(self, title_part: str) -> dict[str, Any] | None:
        with self.api() as api:
            found = [p for p in api.get("/api/projects", params={"page_size": 100}).json()["results"]
                     if title_part in p["title"]]
        assert len(found) <= 1, f"more than one project named like {title_part!r}: {found}"
        return found[0] if found else None

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task with its predictions and annotations (one GET per task, as the UI does)."""
        with self.api() as api:
            listed = api.get("/api/tasks", params={"project": project_id, "page_size": 1000}).json()["tasks"]
            return [api.get(f"/api/tasks/{t['id']}").json() for t in listed]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Iterator[LabelStudioServer]:
    if not LABEL_STUDIO.exists():
        pytest.skip(f"Label Studio is not installed at {LABEL_STUDIO}: `make test` builds its venv "
                    "(make .venv-labelstudio/.installed-stamp)")
    data = tmp_path_factory.mktemp("label-studio")
    port, token = free_port(), secrets.token_hex(20)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = data / "label-studio.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1",
             "--port", str(port), "--data-dir", str(data), "--username", "reviewer@dropwire.local",
             "--password", secrets.token_hex(12), "--user-token", token, "--enable-legacy-api-token"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabelStudioServer(url=f"http://127.0.0.1:{port}", token=token, process=process, log=log)
    try:
        wait_for(server.ready, timeout=START_TIMEOUT_S, interval=0.5, what=f"Label Studio to answer (log: {log})")
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
