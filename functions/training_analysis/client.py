"""The client training code uses (seed 2): analyze (sync), analyze_async + polling,
query_knowledge; retries with the seed's RetryConfig (retryable statuses, Retry-After,
exponential backoff with jitter, never on 400/404) and a fallback mode for when analysis is
unavailable: strict (raise), fallback (warn, go on; the default) or local (run the analyzers
in this process against MLflow). It imports neither litestar nor duckdb."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import msgspec

from dropwire.functions.training_analysis.core.knowledge import KnowledgeItem
from dropwire.functions.training_analysis.core.model import AnalysisOptions, AnalysisResult, AnalysisStatus

log = logging.getLogger("dropwire.training_analysis.client")

FallbackMode = Literal["strict", "fallback", "local"]
FINISHED = ("completed", "partial")


class RetryConfig(msgspec.Struct, kw_only=True, frozen=True):
    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 10.0
    backoff_factor: float = 2.0
    retryable_statuses: tuple[int, ...] = (408, 429, 500, 502, 503, 504)
    #: A Retry-After longer than this is not waited for: the request counts as failed.
    max_retry_after: float = 120.0

    def get_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter (attempt 0 is the first retry)."""
        delay = min(self.base_delay * (self.backoff_factor ** attempt), self.max_delay)
        return delay + random.uniform(0, delay * 0.1)


class PollingConfig(msgspec.Struct, kw_only=True, frozen=True):
    initial_interval: float = 1.0
    max_interval: float = 10.0
    max_wait_time: float = 300.0
    backoff_factor: float = 1.5


class AnalysisError(Exception):
    """The analysis itself failed (the run is unknown, MLflow unreachable, ...)."""

    def __init__(self, message: str, *, status: int | None = None, body: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}
        self.code = self.body.get("error")


class RequestRejected(AnalysisError):
    """400/404 and other answers that retrying cannot change."""


class ServerUnavailableError(AnalysisError):
    """No answer, or only retryable ones, after every retry."""


class Attempt(msgspec.Struct, kw_only=True, frozen=True):
    """One HTTP attempt, for the caller to see what the client did."""

    method: str
    path: str
    status: int | None
    error: str | None
    waited_before: float


class TrainingAnalysisClient:
    def __init__(self, server_url: str, *, retry: RetryConfig = RetryConfig(), polling: PollingConfig = PollingConfig(),
                 fallback: FallbackMode = "fallback", timeout: float = 60.0, token: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if fallback not in ("strict", "fallback", "local"):
            raise ValueError(f"fallback must be strict, fallback or local, not {fallback!r}")
        self.retry = retry
        self.polling = polling
        self.fallback = fallback
        self.sleep = sleep
        self.attempts: list[Attempt] = []
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=server_url.rstrip("/"), timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TrainingAnalysisClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- analysis -------------------------------------------------------------------------
    def analyze(self, run_id: str, mlflow_uri: str, analysis_options: dict | AnalysisOptions | None = None) -> AnalysisResult | None:
        """Analyse and wait for the result. When analysis is unavailable: raise (strict),
        warn and return None (fallback), or analyse in this process (local)."""
        body = self._body(run_id, mlflow_uri, analysis_options, "sync")
        try:
            response = self._request("POST", "/api/v1/analyze", json=body)
            if response.status_code == 202:  # the server stopped waiting: poll for it
                return self.wait_for_result(response.json()["request_id"])
            return msgspec.json.decode(response.content, type=AnalysisResult)
        except ServerUnavailableError as exc:
            return self._unavailable(exc, run_id, mlflow_uri, body["analysis_options"])

    def analyze_async(self, run_id: str, mlflow_uri: str, analysis_options: dict | AnalysisOptions | None = None) -> str | None:
        """Request an analysis and return its request id at once (None when unavailable and not strict)."""
        body = self._body(run_id, mlflow_uri, analysis_options, "async")
        try:
            return self._request("POST", "/api/v1/analyze", json=body).json()["request_id"]
        except ServerUnavailableError as exc:
            if self.fallback == "strict":
                raise
            log.warning("training analysis unavailable (%s); training goes on without it", exc)
            return None

    def get_status(self, request_id: str) -> AnalysisStatus:
        return msgspec.json.decode(self._request("GET", f"/api/v1/analyses/{request_id}/status").content, type=AnalysisStatus)

    def get_result(self, request_id: str) -> AnalysisResult:
        return msgspec.json.decode(self._request("GET", f"/api/v1/analyses/{request_id}/result").content, type=AnalysisResult)

    def wait_for_result(self, request_id: str) -> AnalysisResult:
        """Poll with the PollingConfig's growing interval until the analysis finishes."""
        started = time.monotonic()
        interval = self.polling.initial_interval
        while time.monotonic() - started < self.polling.max_wait_time:
            status = self.get_status(request_id)
            if status.status in FINISHED:
                return self.get_result(request_id)
            if status.status == "failed":
                raise AnalysisError(status.error.message if status.error else f"analysis {request_id} failed",
                                    body=msgspec.to_builtins(status.error) if status.error else None)
            self.sleep(interval)
            interval = min(interval * self.polling.backoff_factor, self.polling.max_interval)
        raise TimeoutError(f"Analysis did not complete within {self.polling.max_wait_time}s")

    # -- knowledge ------------------------------------------------------------------------
    def query_knowledge(self, query: str, domain: str | None = None, query_type: str | None = None,
                        max_results: int = 5) -> list[KnowledgeItem]:
        body = {"query": query, "domain": domain, "query_type": query_type, "max_results": max_results}
        response = self._request("POST", "/api/v1/knowledge/query", json=body)
        return msgspec.convert(response.json()["results"], list[KnowledgeItem])

    # -- plumbing -------------------------------------------------------------------------
    @staticmethod
    def _body(run_id: str, mlflow_uri: str, options: dict | AnalysisOptions | None, mode: str) -> dict:
        # Fail fast on what the server would refuse anyway (the seed: validate before sending).
        if not run_id or not isinstance(run_id, str):
            raise RequestRejected("run_id must be a non-empty string", body={"error": "VALIDATION_ERROR"})
        if not mlflow_uri:
            raise RequestRejected("mlflow_uri (the tracking URI) is required", body={"error": "VALIDATION_ERROR"})
        checked = options if isinstance(options, AnalysisOptions) else msgspec.convert(options or {}, AnalysisOptions)
        return {"run_id": run_id, "mlflow_tracking_uri": mlflow_uri, "analysis_options": msgspec.to_builtins(checked),
                "mode": mode}

    def _unavailable(self, exc: ServerUnavailableError, run_id: str, mlflow_uri: str, options: dict) -> AnalysisResult | None:
        if self.fallback == "strict":
            raise exc
        if self.fallback == "local":
            log.warning("training analysis server unavailable (%s); analysing run %s in this process", exc, run_id)
            try:
                return analyze_locally(run_id, mlflow_uri, msgspec.convert(options, AnalysisOptions))
            except Exception as local:
                log.warning("local analysis of run %s failed too (%s); training goes on without it", run_id, local)
                return None
        log.warning("training analysis unavailable (%s); skipping analysis, training metrics are logged to MLflow", exc)
        return None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        waited = 0.0
        last: ServerUnavailableError | None = None
        for attempt in range(self.retry.max_retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                self.attempts.append(Attempt(method=method, path=path, status=None, error=repr(exc), waited_before=waited))
                last = ServerUnavailableError(f"{method} {path}: {type(exc).__name__}: {exc}")
                retry_after = None
            else:
                self.attempts.append(Attempt(method=method, path=path, status=response.status_code, error=None,
                                             waited_before=waited))
                if response.status_code < 400:
                    return response
                body = _json(response)
                message = f"{method} {path}: {response.status_code} {body.get('error', '')}: {body.get('message', response.text)}"
                if response.status_code not in self.retry.retryable_statuses:
                    raise RequestRejected(message, status=response.status_code, body=body)
                last = ServerUnavailableError(message, status=response.status_code, body=body)
                retry_after = _retry_after(response.headers.get("retry-after"))
            if attempt == self.retry.max_retries:
                break
            waited = self.retry.get_delay(attempt) if retry_after is None else retry_after
            if waited > self.retry.max_retry_after:
                break
            self.sleep(waited)
        assert last is not None, "every attempt that does not return sets last"
        raise last


def _json(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def analyze_locally(run_id: str, mlflow_uri: str, options: AnalysisOptions = AnalysisOptions()) -> AnalysisResult:
    """The fallback mode "local": the same analyzers, in this process, straight from MLflow."""
    from dropwire.functions.training_analysis.core.knowledge import KnowledgeBase
    from dropwire.functions.training_analysis.core.mlflow_reader import read_run
    from dropwire.functions.training_analysis.core.pipeline import run_analysis

    run = read_run(mlflow_uri, run_id)
    return run_analysis(run, options, request_id=f"local-{run_id}", knowledge=KnowledgeBase())


def print_summary(result: AnalysisResult | None, out: Callable[[str], None] = print) -> None:
    """A few lines for the console: status, summary, warnings, the top actions."""
    if result is None:
        out("training analysis: unavailable (see the warning above)")
        return
    out(f"training analysis {result.request_id}: {result.status} in {result.execution_time:.2f}s")
    out(f"  {result.summary}")
    for warning in result.warnings:
        out(f"  warning: {warning}")
    for analysis in result.all_analyses():
        if analysis.findings.severity != "info":
            out(f"  [{analysis.findings.severity}] {analysis.rule_id}: {analysis.findings.description}")
    for action in result.actions[:3]:
        out(f"  {action.rank}. {action.action}")
