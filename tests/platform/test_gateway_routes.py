"""Every gateway route the README names, called over real HTTP on a running emulator: bearer
tokens on all of them, the operational routes (cleanup, reprocess, schedules) and the docs."""

from __future__ import annotations

import re

import pytest

from tests.conftest import wait_for
from tests.platform.test_emulator import assert_error_shape, invocations

pytestmark = pytest.mark.slow

TOKEN = {"Authorization": "Bearer s3cret"}


DOCS = ("/schema/openapi.json", "/schema/swagger", "/schema/assets/swagger-ui-bundle.js")


def test_every_route_but_health_and_the_docs_needs_a_bearer_token(start_emulator):
    _emulator, http = start_emulator(DROPWIRE_HTTP__API_TOKENS='["s3cret"]', DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions")
    # The docs page, its assets and the OpenAPI document open in a browser, which sends no token
    # (http.open_docs, on by default); the page's Authorize button takes one for the routes.
    for docs in DOCS:
        assert http.get(docs).status_code == 200, docs
    document = http.get("/schema/openapi.json").json()
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert document["security"] == [{"bearer": []}] and document["paths"]["/health"]["get"]["security"] == [{}]
    paths = document["paths"]
    routes = [(method.upper(), re.sub(r"\{[^}]+\}", "1", path)) for path, item in paths.items() for method in item
              if method in {"get", "post", "put", "delete", "patch"}]
    # The gateway's own routes and the mounted evaluation API are all in the document.
    assert {("POST", "/tasks/cleanup"), ("POST", "/reprocess"), ("POST", "/schedules/1/run"),
            ("GET", "/health")} <= set(routes) and any(path.startswith("/api/") for _, path in routes)
    for method, path in routes:
        answer = http.request(method, path)
        if path == "/health":
            assert answer.status_code == 200
        elif path.startswith("/v1/"):  # OpenAI's routes: OpenAI's error object in `error`
            for refused in (answer, http.request(method, path, headers={"Authorization": "Bearer wrong"})):
                assert refused.status_code == 401, refused.text
                body = refused.json()
                assert set(body) == {"error", "message", "details", "timestamp"}
                assert (body["error"]["code"], body["error"]["type"]) == ("not_authorized", "invalid_request_error")
        else:
            assert_error_shape(answer, 401, "not_authorized")
            assert_error_shape(http.request(method, path, headers={"Authorization": "Bearer wrong"}), 401, "not_authorized")
    assert http.get("/tasks/stats", headers=TOKEN).status_code == 200
    # The service batches are metered under is known before its first request.
    usage = http.get("/api/v1/quota/usage/batch-upstream", headers=TOKEN)
    assert usage.status_code == 200 and (usage.json()["limits"], usage.json()["requests_today"]) == ([], 0), usage.text


def test_docs_need_the_token_too_when_open_docs_is_off(start_emulator):
    _, http = start_emulator(DROPWIRE_HTTP__API_TOKENS='["s3cret"]', DROPWIRE_HTTP__OPEN_DOCS="false")
    for docs in DOCS:
        assert_error_shape(http.get(docs), 401, "not_authorized")
        assert http.get(docs, headers=TOKEN).status_code == 200, docs
    assert_error_shape(http.get("/tasks/stats"), 401, "not_authorized")


def test_cleanup_reprocess_and_schedule_runs_over_http(start_emulator):
    emulator, http = start_emulator()
    bucket = emulator.settings.bucket_path
    (bucket / "incoming").mkdir(parents=True)
    (bucket / "incoming" / "again.csv").write_text("abc\n")
    wait_for(lambda: invocations(emulator, "measure") == [("succeeded", None, "upload")], what="the upload to be handled")

    # Reprocess runs the function again on the same object, past its receipt.
    answer = http.post("/reprocess", json={"function": "measure", "bucket": "local", "key": "incoming/again.csv"})
    assert answer.status_code == 202, answer.text
    reprocessed = answer.json()["task_id"]
    wait_for(lambda: http.get(f"/tasks/{reprocessed}").json()["status"] == "succeeded", what="the reprocess task")
    assert invocations(emulator, "measure") == [("succeeded", None, "upload"), ("succeeded", None, "reprocess")]
    assert http.get(f"/tasks/{reprocessed}").json()["result"] == {"key": "incoming/again.csv", "bytes": 4, "hop": None}
    missing = assert_error_shape(http.post("/reprocess", json={"function": "measure", "bucket": "local", "key": "incoming/gone.csv"}),
                                 404, "not_found")
    assert "incoming/gone.csv does not exist" in missing["message"]

    # A schedule fired by hand runs its function now.
    fired = http.post("/schedules/every-2s/run")
    assert fired.status_code == 202, fired.text
    tick = fired.json()["task_id"]
    wait_for(lambda: http.get(f"/tasks/{tick}").json()["status"] == "succeeded", what="the schedule's run")
    assert http.get(f"/tasks/{tick}").json()["result"]["catch_up"] is False
    assert "no schedule named 'nope'" in assert_error_shape(http.post("/schedules/nope/run"), 404, "not_found")["message"]

    # Cleanup removes finished tasks older than the given age, and only those.
    assert http.post("/tasks/cleanup", params={"older_than_days": 1}).json() == {"removed": 0}
    # (the every-2s schedule keeps adding runs meanwhile, so the count is at least these three)
    assert http.post("/tasks/cleanup", params={"older_than_days": 0}).json()["removed"] >= 3
    for task_id in (reprocessed, tick):
        assert_error_shape(http.get(f"/tasks/{task_id}"), 404, "not_found")

    # The interactive docs page is served.
    docs = http.get("/schema/swagger")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html") and "swagger" in docs.text.lower()


def test_http_trigger_errors_name_what_can_be_invoked_and_keep_tracebacks_out_of_the_body(start_emulator):
    _emulator, http = start_emulator()
    http_functions = "['add', 'crash', 'escape', 'sleepy']"  # the sample functions with an HTTP trigger
    unknown = assert_error_shape(http.post("/functions/nope/invoke", json={}), 404, "not_found")
    assert unknown["message"] == f"no function named 'nope'; functions with an HTTP trigger: {http_functions}"
    untriggered = assert_error_shape(http.post("/functions/measure/invoke", json={}), 404, "not_found")
    assert untriggered["message"] == (f"function 'measure' has no HTTP trigger; functions with an HTTP trigger: "
                                      f"{http_functions}")
    # Reprocess names an unknown function as invoke does.
    gone = assert_error_shape(http.post("/reprocess", json={"function": "nope", "bucket": "local", "key": "a.csv"}),
                              404, "not_found")
    assert gone["message"].startswith("no function named 'nope'")
    # A handler that raises on every attempt: the waiting caller gets the one error shape with
    # the error itself; the traceback stays with the task's attempts.
    failed = http.post("/functions/add/invoke", params={"wait": 30}, json={})
    body = assert_error_shape(failed, 409, "refused_by_handler")
    assert "Traceback" not in failed.text and ("TypeError" in body["message"] or "KeyError" in body["message"]), body
    task_id = int(body["details"]["task_id"])
    assert body["details"]["status_url"] == f"/tasks/{task_id}" and f"GET /tasks/{task_id}" in body["message"]
    attempts = http.get(f"/tasks/{task_id}").json()["history"]
    assert attempts and all("Traceback" in attempt["traceback"] for attempt in attempts)
