"""The gateway's OpenAPI document says what the running gateway does (the product's catalog
mounted, as `dropwire emulate` serves it, forwarding /v1 inference to a real runtime with text
generation on): checked by reading it, by OPTIONS on every path, and by a schemathesis fuzz run
against the real server over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis

from dropwire.local_emulator.emulator import Emulator
from tests.http_contract import (
    ERROR_KEYS,
    error_component,
    fuzz,
    misdocumented_errors,
    operations,
    rendered_offline,
    wrong_allow_headers,
)
from tests.platform.conftest import emulator_settings
from tests.runtime.conftest import start_runtime, stop_runtime

pytestmark = pytest.mark.slow

UPLOADS = ("/api/use-cases/{use_case}/upload-config", "/api/use-cases/{use_case}/models/{model}/upload-dataset",
           "/api/use-cases/{use_case}/models/{model}/upload-predictions")


@pytest.fixture(scope="module")
def runtime_port(tmp_path_factory) -> Iterator[int]:
    """A real runtime behind the gateway's /v1 inference forwarding."""
    runtime = start_runtime(tmp_path_factory.mktemp("contract-runtime"), textgen=True)
    yield urlsplit(runtime.url).port
    stop_runtime(runtime)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, runtime_port: int) -> Iterator[str]:
    settings_ = emulator_settings(tmp_path_factory.mktemp("contract"), DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                                  DROPWIRE_RUNTIME__PORT=str(runtime_port))
    with Emulator(settings_):
        yield f"http://127.0.0.1:{settings_.http.port}"


@pytest.fixture(scope="module")
def document(gateway: str) -> dict:
    return httpx.get(f"{gateway}/schema/openapi.json", timeout=30).json()


def test_every_error_response_is_the_one_error_body(document: dict) -> None:
    assert misdocumented_errors(document) == []
    assert set(error_component(document)["required"]) == ERROR_KEYS
    by_operation = {(path, method): set(op["responses"]) for path, method, op in operations(document)}
    reads_by_id = [(path, method) for path, method in by_operation if "{" in path and method == "get"]
    assert len(reads_by_id) >= 13 and all("404" in by_operation[read] for read in reads_by_id)
    assert all("415" in by_operation[(path, "post")] for path in UPLOADS)
    assert all("401" in codes for (path, _), codes in by_operation.items() if path != "/health")


def test_every_upload_documents_its_body(document: dict) -> None:
    for path in UPLOADS:
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] and set(body["content"]) == {"multipart/form-data", "application/octet-stream"}, path
        assert body["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert "application/octet-stream" in document["paths"]["/buckets/{bucket}/objects/{key}"]["put"]["requestBody"]["content"]
    missing = [f"{method} {path}" for path, method, op in operations(document) if method in ("post", "put")
               and "requestBody" not in op and op.get("parameters") is None]
    assert missing == []


def test_options_names_every_method_of_every_path(gateway: str, document: dict) -> None:
    with httpx.Client(base_url=gateway, timeout=30) as client:
        assert client.options("/api/use-cases").headers["allow"] == "GET, OPTIONS, POST"
        assert wrong_allow_headers(client, document) == []


def answer_at_once(case: schemathesis.Case) -> None:
    if case.query and "wait" in case.query:
        case.query["wait"] = 0  # a write answers at once, with where its handlers are


def test_the_gateway_answers_as_its_schema_says(gateway: str) -> None:
    failures = fuzz(f"{gateway}/schema/openapi.json", max_examples=8, prepare=answer_at_once)
    assert not failures, "\n\n".join(failures)


def test_the_docs_page_renders_every_operation_with_nothing_off_the_machine(gateway: str, document: dict,
                                                                            tmp_path) -> None:
    paths, hosts = rendered_offline(f"{gateway}/schema/swagger", tmp_path)
    assert paths == set(document["paths"])
    assert hosts == {"127.0.0.1"}
