"""A domain is a plug-in: one folder whose `__init__.py` exports a DOMAIN, plus one line in a
catalog. A small extra domain, written into a temporary package, is served beside the
product's domains by the real emulator: its function fires on a dropped file and its API
route answers over HTTP, and its migration creates its table after the platform's."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from dropwire.storage import migrate
from tests.conftest import wait_for
from tests.platform.test_emulator import invocations

pytestmark = pytest.mark.slow

PACKAGE = {
    "extra_domain/__init__.py": '''
        """A domain outside the product: counts the lines of files dropped under lines/."""

        from dropwire.functions.platform.domain import Domain

        DOMAIN = Domain("lines", handlers="extra_domain.handlers", api="extra_domain.api",
                        migrations="extra_domain.migrations")
    ''',
    "extra_domain/migrations/__init__.py": "",
    "extra_domain/migrations/0001_line_counts.sql": '''
        -- migrate:up
        CREATE TABLE line_counts (key VARCHAR PRIMARY KEY, lines INTEGER NOT NULL);
        -- migrate:down
        DROP TABLE line_counts;
    ''',
    "extra_domain/handlers.py": '''
        from dropwire.functions.platform.registry import OnUpload, Output


        def register(functions):
            @functions.function("count_lines", on=[OnUpload(bucket="local", prefix="lines/")],
                                outputs=[Output(bucket="local", prefix="counted/")], timeout_seconds=30)
            def count_lines(event, context):
                with context.objects.open(event.bucket, event.key) as stream:
                    lines = stream.read().count(b"\\n")
                context.outputs.write_bytes("local", f"counted/{event.key}", f"{lines}\\n".encode())
                return {"lines": lines}
    ''',
    "extra_domain/api.py": '''
        from litestar import Router, get


        def build_router(ports):
            @get("/lines/hello", sync_to_thread=False)
            def hello() -> dict:
                return {"domain": "lines"}

            return Router(path="/api", route_handlers=[hello])
    ''',
    # The one line: the product's domains plus this one.
    "extra_catalog.py": '''
        from dropwire.functions.catalog import DOMAINS as PRODUCT
        from dropwire.functions.platform.domain import build_registry

        import extra_domain

        DOMAINS = [*PRODUCT, extra_domain.DOMAIN]
        functions = build_registry(DOMAINS)
    ''',
}


@pytest.fixture
def extra_domain(tmp_path, monkeypatch):
    root = tmp_path / "plugins"
    for name, text in PACKAGE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(root))  # this process (the emulator, its gateway)
    # ... and the handler processes it starts.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    yield "extra_catalog:functions"
    for module in [m for m in sys.modules if m == "extra_catalog" or m.split(".")[0] == "extra_domain"]:
        del sys.modules[module]


def test_a_domain_folder_plus_one_line_is_served_beside_the_product(start_emulator, extra_domain):
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS=extra_domain)
    # Its migration ran after the platform's, recorded in the same table.
    assert emulator.store.query("SELECT version, name FROM schema_migrations ORDER BY version DESC LIMIT 1") == [
        (migrate.LATEST + 1, "lines.line_counts")]
    assert emulator.store.query("SELECT count(*) FROM line_counts") == [(0,)]
    # Its route answers over HTTP, beside the product's own API.
    answer = http.get("/api/lines/hello")
    assert answer.status_code == 200 and answer.json() == {"domain": "lines"}, answer.text
    assert http.get("/api/v1/quota/usage/batch-upstream").status_code == 200
    # Its function fires on a dropped file.
    bucket = emulator.settings.bucket_path
    (bucket / "lines").mkdir(parents=True)
    (bucket / "lines" / "three.txt").write_text("a\nb\nc\n")
    wait_for(lambda: invocations(emulator, "count_lines"), timeout=60, what="count_lines fired")
    assert invocations(emulator, "count_lines")[0][0] == "succeeded", invocations(emulator, "count_lines")
    wait_for(lambda: (bucket / "counted" / "lines" / "three.txt").exists(), what="its output")
    assert (bucket / "counted" / "lines" / "three.txt").read_text() == "3\n"
