"""The data-quality analyzer over Deepchecks results (``deepchecks/*.json``: a SuiteResult or
CheckResult as ``to_json()`` writes it): every condition that did not pass becomes a finding."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from dropwire.functions.training_analysis.core.model import (
    AgentResult,
    Analysis,
    Findings,
    NotChecked,
    Recommendations,
    RunData,
    Severity,
)

NAME = "DeepchecksArtifactsAnalyzer"
SEVERITY: dict[str, Severity] = {"FAIL": "warning", "ERROR": "warning", "WARN": "info"}


def _checks(document: Any) -> Iterator[dict]:
    """Every check result in a document: a suite's results, or one check result."""
    if isinstance(document, dict):
        if "conditions_results" in document or "check" in document:
            yield document
        for key in ("results", "checks"):
            for item in document.get(key, []) or []:
                yield from _checks(item)
    elif isinstance(document, list):
        for item in document:
            yield from _checks(item)


def _check_name(check: dict) -> str:
    inner = check.get("check")
    name = inner.get("name") if isinstance(inner, dict) else inner
    return str(name or check.get("header") or "unnamed check")


def analyze_deepchecks(run: RunData) -> AgentResult:
    if not run.deepchecks:
        return AgentResult(agent_name=NAME, status="skipped",
                           not_checked=[NotChecked(check="data quality", reason="no Deepchecks results (deepchecks/*.json) in the run")])
    found: list[Analysis] = []
    seen = 0
    for file, document in sorted(run.deepchecks.items()):
        for check in _checks(document):
            seen += 1
            name = _check_name(check)
            for condition in check.get("conditions_results", []) or []:
                status = str(condition.get("Status", condition.get("status", ""))).upper()
                if status not in SEVERITY:
                    continue
                slug = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
                text = str(condition.get("Condition", condition.get("condition", "")))
                more = str(condition.get("More Info", condition.get("more_info", "")))
                found.append(Analysis(
                    rule_id=f"DQ.{slug}",
                    findings=Findings(description=f"Deepchecks '{name}' {status}: {text}" + (f" ({more})" if more else ""),
                                      severity=SEVERITY[status], evidence={"file": file, "check": name, "status": status}),
                    recommendations=Recommendations(action=f"Fix what '{name}' reports before trusting the model's scores",
                                                    rationale=more or text)))
    not_checked = [] if seen else [NotChecked(check="data quality", reason="the Deepchecks files hold no check results")]
    return AgentResult(agent_name=NAME, status="completed", analysis=found, not_checked=not_checked)
