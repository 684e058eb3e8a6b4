"""Label Studio's REST API (the documented /api/projects, /api/tasks and import/export routes)
over one pooled httpx client, with retries and backoff on what may pass (connection errors,
timeouts, 429 and 5xx, honouring Retry-After) and none on what will not (401, 400, ...).
label-studio-sdk 2.x is not used: it pulls opencv-python-headless, whose numpy<2.3 pin
clashes with this project's numpy.

Errors never carry the token: the `Authorization` header is the only place it goes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from dropwire.functions.kit.backoff import equal_jitter
from dropwire.functions.kit.redact import mask_url

RETRIED = {408, 429, 500, 502, 503, 504}
PAGE_SIZE = 500


class LabelStudioError(Exception):
    """Label Studio did not do what was asked. `retryable`: down or overloaded (try later),
    not refused (fix the token, the URL or the request first)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def _wait(attempt: int, base: float, cap: float, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return equal_jitter(attempt, base, cap)


class LabelStudio:
    def __init__(self, url: str, token: str, *, timeout_seconds: float = 30.0, max_attempts: int = 4,
                 retry_base_seconds: float = 0.5, retry_max_seconds: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout_seconds,
                                    headers={"Authorization": f"Token {token}"},
                                    limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))
        self.max_attempts, self.base, self.cap, self._sleep = max_attempts, retry_base_seconds, retry_max_seconds, sleep

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        where = f"Label Studio at {mask_url(self.url)}: {method} {path}"
        problem: LabelStudioError | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = LabelStudioError(f"{where} could not be reached ({type(exc).__name__}: {exc}) after "
                                           f"{attempt} attempt(s)", retryable=True)
                retry_after = None
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                detail = response.text[:300].replace("\n", " ")
                if response.status_code == 401:
                    raise LabelStudioError(f"{where} answered 401: the token (curation.label_studio_token) is not "
                                           f"accepted; with a personal access token, enable legacy tokens or use one "
                                           f"({detail})", retryable=False, status=401)
                problem = LabelStudioError(f"{where} answered {response.status_code}: {detail}",
                                           retryable=response.status_code in RETRIED, status=response.status_code)
                if not problem.retryable:
                    raise problem
                retry_after = response.headers.get("retry-after")
            if attempt < self.max_attempts:
                self._sleep(_wait(attempt, self.base, self.cap, retry_after))
        assert problem is not None, "max_attempts is at least 1"
        raise problem

    # ------------------------------------------------------------------ projects

    def project(self, project_id: int) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/api/projects/{project_id}")
        except LabelStudioError as exc:
            if exc.status == 404:
                return None
            raise

    def find_project(self, title: str) -> dict[str, Any] | None:
        page = 1
        while True:
            answer = self._call("GET", "/api/projects", params={"page": page, "page_size": 100, "title": title})
            for project in answer.get("results", []):
                if project.get("title") == title:
                    return project
            if not answer.get("next"):
                return None
            page += 1

    def create_project(self, title: str, label_config: str, description: str) -> dict[str, Any]:
        return self._call("POST", "/api/projects", json={"title": title, "label_config": label_config,
                                                         "description": description})

    # ------------------------------------------------------------------ tasks

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project (its data, without predictions), page by page."""
        page = 1
        while True:
            try:
                answer = self._call("GET", "/api/tasks", params={"project": project_id, "page": page,
                                                                 "page_size": PAGE_SIZE})
            except LabelStudioError as exc:
                if exc.status == 404:  # past the last page
                    return
                raise
            found = answer.get("tasks", [])
            yield from found
            if len(found) < PAGE_SIZE or page * PAGE_SIZE >= answer.get("total", 0):
                return
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> int:
        answer = self._call("POST", f"/api/projects/{project_id}/import", content=json.dumps(tasks).encode(),
                            headers={"content-type": "application/json"})
        return int(answer.get("task_count", 0))

    def annotated_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's tasks that have annotations, with them (Label Studio's JSON export)."""
        return self._call("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})


def import_chunks(tasks: list[dict[str, Any]], *, max_tasks: int, max_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """The tasks in chunks of at most `max_tasks` tasks and about `max_bytes` of JSON each
    (Label Studio refuses request bodies over its DATA_UPLOAD_MAX_MEMORY_SIZE); a single task
    larger than `max_bytes` goes alone."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for task in tasks:
        task_bytes = len(json.dumps(task)) + 2
        if chunk and (len(chunk) >= max_tasks or size + task_bytes > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(task)
        size += task_bytes
    if chunk:
        yield chunk
