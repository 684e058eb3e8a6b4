"""The runtime's OpenAPI document says what the running `dropwire runtime serve` does, its
OpenAI-compatible text generation included: checked by reading it, by OPTIONS on every path,
and by a schemathesis fuzz run over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis

from dropwire.runtime.synthetic import generated_csv
from tests.http_contract import (
    ERROR_KEYS,
    error_component,
    fuzz,
    misdocumented_errors,
    rendered_offline,
    wrong_allow_headers,
)
from tests.runtime.conftest import RuntimeProcess, start_runtime, stop_runtime

TEXTGEN = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")


@pytest.fixture(scope="module")
def runtime(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """The shared runtime, with text generation on (its embedded test model)."""
    process = start_runtime(tmp_path_factory.mktemp("runtime-data"), textgen=True, model_path=tiny_model,
                            max_upload_bytes=2_000_000)
    yield process
    stop_runtime(process)


@pytest.fixture(scope="module")
def document(runtime: RuntimeProcess) -> dict:
    return httpx.get(f"{runtime.url}/schema/openapi.json", timeout=30).json()


def test_every_error_response_is_the_one_error_body_and_csv_bodies_are_documented(document: dict) -> None:
    assert misdocumented_errors(document) == []
    assert set(error_component(document)["required"]) == ERROR_KEYS
    assert set(TEXTGEN) <= set(document["paths"])
    for path in ("/datasets", "/quick-draw"):
        body = document["paths"][path]["post"]["requestBody"]
        assert body["required"] and set(body["content"]) == {"text/csv"}, path
        assert {"413", "422"} <= set(document["paths"][path]["post"]["responses"])
    for answer in (document["paths"]["/datasets/{handle}/forecasts/{index}"]["get"]["responses"]["200"],
                   document["paths"]["/quick-draw"]["post"]["responses"]["200"]):
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Forecast"}
        assert set(answer["content"]) == {"application/json", "image/png"}


def test_options_names_every_method_of_every_path(runtime: RuntimeProcess, document: dict) -> None:
    with httpx.Client(base_url=runtime.url, timeout=30) as client:
        assert client.options("/datasets/x").headers["allow"] == "DELETE, GET, OPTIONS"
        assert wrong_allow_headers(client, document) == []


def test_the_docs_page_renders_every_operation_with_nothing_off_the_machine(runtime: RuntimeProcess, document: dict,
                                                                            tmp_path) -> None:
    paths, hosts = rendered_offline(f"{runtime.url}/schema/swagger", tmp_path)
    assert paths == set(document["paths"])
    assert hosts == {"127.0.0.1"}


def test_the_runtime_answers_as_its_schema_says(runtime: RuntimeProcess) -> None:
    # A real dataset, so generated requests reach forecasts too, not only "no such dataset".
    handle = httpx.post(f"{runtime.url}/datasets", content=generated_csv(40, seed=5), params={"precompute": False},
                        headers={"content-type": "text/csv"}, timeout=30).json()["handle"]

    def on_the_dataset(case: schemathesis.Case) -> None:
        if case.path_parameters and "handle" in case.path_parameters and case.method != "DELETE":
            case.path_parameters["handle"] = handle
        if case.path == "/forecasts/background" and isinstance(case.body, dict):
            case.body["paused"] = False  # a held lane would keep each range request to its timeout

    failures = fuzz(f"{runtime.url}/schema/openapi.json", max_examples=15, prepare=on_the_dataset)
    assert not failures, "\n\n".join(failures)
