"""One analysis: the artifact analyzers in parallel, then the integration step, then the
advisor, each under its own timeout and all under a total limit. What finished is kept: an
analyzer past its time makes the result "partial" with a warning, never a failure.

The threads are this call's own (a pool closed before it returns, abandoning anything still
running): the only way to stop waiting on a slow analyzer in-process."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable

import msgspec

from dropwire.functions.training_analysis.core import advisor, dataset, deepchecks, integration, training
from dropwire.functions.training_analysis.core.knowledge import KnowledgeBase
from dropwire.functions.training_analysis.core.model import (
    SEVERITY_RANK,
    AgentResult,
    AnalysisOptions,
    AnalysisResult,
    NotChecked,
    RunData,
)

Analyzer = Callable[[RunData, AnalysisOptions], AgentResult]

MISSING_WARNINGS = {
    deepchecks.NAME: "Deepchecks artifacts not found - skipping data quality analysis",
    dataset.NAME: "Dataset metadata not found - skipping dataset analysis",
}


def artifact_analyzers(options: AnalysisOptions) -> tuple[dict[str, Analyzer], list[NotChecked]]:
    """The enabled artifact analyzers by name, and what the options switched off."""
    chosen: dict[str, Analyzer] = {}
    off: list[NotChecked] = []
    for enabled, name, run in (
        (options.enable_training_analysis, training.NAME, training.analyze_training),
        (options.enable_dataset_analysis, dataset.NAME, lambda r, _: dataset.analyze_dataset(r)),
        (options.enable_deepchecks_analysis, deepchecks.NAME, lambda r, _: deepchecks.analyze_deepchecks(r)),
    ):
        if enabled:
            chosen[name] = run
        else:
            off.append(NotChecked(check=name, reason="switched off in analysis_options"))
    return chosen, off


def run_analysis(run: RunData, options: AnalysisOptions, *, request_id: str, knowledge: KnowledgeBase,
                 analyzers: dict[str, Analyzer] | None = None) -> AnalysisResult:
    started = time.monotonic()
    deadline = started + options.total_timeout_seconds
    chosen, not_checked = artifact_analyzers(options) if analyzers is None else (analyzers, [])
    warnings = [f"Artifact missing: {path}" for path in run.missing if not path.startswith(("deepchecks", "dataset"))]
    results: list[AgentResult] = []
    actions = []
    pool = cf.ThreadPoolExecutor(max_workers=len(chosen) + 1, thread_name_prefix="analysis")
    try:
        futures = {name: pool.submit(_timed, fn, run, options) for name, fn in chosen.items()}
        cf.wait(futures.values(), timeout=_budget(options, deadline))
        for name, future in futures.items():
            results.append(_outcome(name, future, options, warnings))
        integrated = pool.submit(_timed, lambda r, o: integration.integrate(results), run, options)
        cf.wait([integrated], timeout=_budget(options, deadline))
        results.append(_outcome(integration.NAME, integrated, options, warnings))
        advised = pool.submit(_timed_advice, results, knowledge, options)
        cf.wait([advised], timeout=_budget(options, deadline))
        if advised.done() and advised.exception() is None:
            advice, actions = advised.result()
            results.append(advice)
        else:
            results.append(_outcome(advisor.NAME, advised, options, warnings))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    elapsed = time.monotonic() - started
    if elapsed >= options.total_timeout_seconds:
        warnings.insert(0, f"Analysis timed out after {options.total_timeout_seconds:g}s")
    for result in results:
        if result.status == "skipped" and result.agent_name in MISSING_WARNINGS:
            warnings.append(MISSING_WARNINGS[result.agent_name])
        not_checked += result.not_checked
    partial = any(r.status in ("timed_out", "failed") for r in results)
    return AnalysisResult(
        request_id=request_id, run_id=run.run_id, tracking_uri=run.tracking_uri, status="partial" if partial else "completed",
        summary=summarise(results, partial), warnings=warnings, agent_results=results, actions=actions,
        not_checked=not_checked, execution_time=round(elapsed, 4), knowledge_base_version=knowledge.version)


def _budget(options: AnalysisOptions, deadline: float) -> float:
    return max(0.0, min(options.agent_timeout_seconds, deadline - time.monotonic()))


def _timed(fn: Analyzer, run: RunData, options: AnalysisOptions) -> AgentResult:
    started = time.monotonic()
    result = fn(run, options)
    return _with_duration(result, time.monotonic() - started)


def _timed_advice(results: list[AgentResult], knowledge: KnowledgeBase, options: AnalysisOptions):
    started = time.monotonic()
    result, actions = advisor.advise(results, knowledge, options.optimization_focus)
    return _with_duration(result, time.monotonic() - started), actions


def _with_duration(result: AgentResult, seconds: float) -> AgentResult:
    return msgspec.structs.replace(result, duration_seconds=round(seconds, 4))


def _outcome(name: str, future: cf.Future, options: AnalysisOptions, warnings: list[str]) -> AgentResult:
    if not future.done():
        future.cancel()
        warnings.append(f"{name} did not complete")
        return AgentResult(agent_name=name, status="timed_out",
                           error=f"did not finish within its {options.agent_timeout_seconds:g}s or the analysis's "
                                 f"{options.total_timeout_seconds:g}s")
    error = future.exception()
    if error is not None:
        warnings.append(f"{name} failed: {type(error).__name__}: {error}")
        return AgentResult(agent_name=name, status="failed", error=f"{type(error).__name__}: {error}")
    return future.result()


def summarise(results: list[AgentResult], partial: bool) -> str:
    found = [a for r in results for a in r.analysis]
    worst = [a for a in found if a.findings.severity != "info"]
    worst.sort(key=lambda a: -SEVERITY_RANK[a.findings.severity])
    if worst:
        head = f"{len(worst)} issue(s) found: " + ", ".join(dict.fromkeys(a.rule_id for a in worst)) + "."
    else:
        head = "No issue at warning level or above" + (f" ({len(found)} note(s))." if found else ".")
    ran = [r.agent_name for r in results if r.status == "completed"]
    unavailable = [r.agent_name for r in results if r.status != "completed"]
    tail = f" Ran: {', '.join(ran)}." if ran else ""
    if unavailable:
        tail += f" Unavailable: {', '.join(unavailable)}."
    return ("Partial analysis. " if partial else "Analysis completed. ") + head + tail
