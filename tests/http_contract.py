"""What every dropwire HTTP app's OpenAPI document must say, checked against the running app:
each error response refers to the one ErrorBody component, each request body is documented,
and OPTIONS names every method each path serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import positive_data_acceptance

ERROR_REF = "#/components/schemas/ErrorBody"
ERROR_KEYS = {"error", "message", "details", "timestamp"}
METHODS = ("get", "put", "post", "delete", "patch")


def operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items() if method in METHODS]


def misdocumented_errors(schema: dict) -> list[str]:
    """Each error response of each operation that does not refer to the ErrorBody component."""
    wrong = []
    for path, method, op in operations(schema):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            content = response.get("content", {})
            refs = {media.get("schema", {}).get("$ref") for media in content.values()}
            if set(content) != {"application/json"} or refs != {ERROR_REF}:
                wrong.append(f"{method.upper()} {path} {status}: {content}")
    return wrong


def error_component(schema: dict) -> dict:
    return schema["components"]["schemas"]["ErrorBody"]


def concrete(path: str) -> str:
    """A request path for a templated one: every parameter filled with an id that exists nowhere."""
    return "/".join("1" if part.startswith("{") else part for part in path.split("/"))


def wrong_allow_headers(client: httpx.Client, schema: dict) -> list[str]:
    """Each path whose OPTIONS answer's Allow header differs from the methods documented for it."""
    wrong = []
    for path, item in schema["paths"].items():
        documented = {m.upper() for m in item if m in METHODS} | {"OPTIONS"}
        response = client.options(concrete(path))
        allowed = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
        if response.status_code != 204 or allowed != documented:
            wrong.append(f"{path}: {response.status_code} Allow: {response.headers.get('allow')!r}, "
                         f"documented {sorted(documented)}")
    return wrong


def fuzz(schema_url: str, max_examples: int, prepare: Callable[[schemathesis.Case], None] = lambda case: None) -> list[str]:
    """Run schemathesis' checks (server errors, status codes, content types, response bodies
    and headers against the schema, ...) on ``max_examples`` generated requests per operation
    of the running app; the failures found, one entry per operation.

    Left out: positive_data_acceptance, which wants every schema-valid request accepted. The
    rules a 400 names (an e-mail address, a configured bucket, an id usable as a folder name,
    an existing use case) are the product's, stated in each message, not schema types."""
    schema = schemathesis.openapi.from_url(schema_url)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        # No shrinking: the first failing example is reported as generated, which bounds the run;
        # derandomized, so a run is reproducible and a failure shows again.
        @given(case=operation.as_strategy())
        @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  derandomize=True, suppress_health_check=list(HealthCheck))
        def conforms(case: schemathesis.Case) -> None:
            prepare(case)
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        try:
            conforms()
        except (Exception, BaseExceptionGroup) as exc:  # every kind of failure is reported, per operation
            failures.append(f"{operation.label}: {exc}")
    return failures


# Debian's headless Chromium (`apt-get install chromium-headless-shell`), or the full browser.
BROWSERS = ("chromium-headless-shell", "chromium", "chrome-headless-shell", "google-chrome")


def rendered_offline(url: str, workdir: Path) -> tuple[set[str], set[str]]:
    """Load ``url`` in a real headless Chromium that cannot resolve any host but loopback, let
    its scripts run, and return (the API paths on the rendered page, the hosts it requested)."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); "
                    "install one with: apt-get install chromium-headless-shell")
    net_log = workdir / "net-log.json"
    page = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=20000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--log-net-log={net_log}",
         f"--user-data-dir={workdir / 'profile'}", url],
        capture_output=True, text=True, timeout=120, check=True)
    paths = set(re.findall(r'data-path="([^"]+)"', page.stdout))
    hosts = {urlsplit(requested).hostname for requested in re.findall(r'"url":"([^"]+)"', net_log.read_text())}
    return paths, hosts
