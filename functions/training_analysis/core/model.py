"""The shapes analysis works on and answers with (the seed's AnalysisResult): plain msgspec
Structs, so the client decodes exactly what the server encodes."""

from __future__ import annotations

from typing import Literal

import msgspec

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
Status = Literal["completed", "partial", "failed"]


class Findings(msgspec.Struct, kw_only=True, frozen=True):
    description: str
    severity: Severity
    #: The numbers that fired the rule.
    evidence: dict[str, float | int | str | None] = msgspec.field(default_factory=dict)
    #: The metric the rule looked at, and the step it points to.
    metric: str | None = None
    step: int | None = None


class Recommendations(msgspec.Struct, kw_only=True, frozen=True):
    action: str
    rationale: str = ""
    #: Knowledge-base entries behind the advice (ids).
    sources: list[str] = msgspec.field(default_factory=list)


class Analysis(msgspec.Struct, kw_only=True, frozen=True):
    #: Stable rule id, e.g. TRAIN.OVERFITTING.
    rule_id: str
    findings: Findings
    recommendations: Recommendations
    #: The step of the checkpoint to keep, where the rule has one.
    best_checkpoint_step: int | None = None
    #: Rule ids this one explains or is explained by (the integration step fills these).
    related: list[str] = msgspec.field(default_factory=list)


class NotChecked(msgspec.Struct, kw_only=True, frozen=True):
    check: str
    reason: str


class AgentResult(msgspec.Struct, kw_only=True, frozen=True):
    agent_name: str
    #: completed | skipped (its input is missing) | timed_out | failed
    status: str
    analysis: list[Analysis] = msgspec.field(default_factory=list)
    not_checked: list[NotChecked] = msgspec.field(default_factory=list)
    duration_seconds: float = 0.0
    error: str | None = None


class RankedAction(msgspec.Struct, kw_only=True, frozen=True):
    rank: int
    action: str
    addresses: list[str]
    priority: float
    rationale: str
    sources: list[str] = msgspec.field(default_factory=list)


class ErrorInfo(msgspec.Struct, kw_only=True, frozen=True):
    """Why an analysis failed, in the shape of the HTTP error body."""

    error: str
    message: str
    details: dict = msgspec.field(default_factory=dict)


class AnalysisResult(msgspec.Struct, kw_only=True):
    request_id: str
    run_id: str
    tracking_uri: str
    status: Status
    summary: str
    warnings: list[str] = msgspec.field(default_factory=list)
    agent_results: list[AgentResult] = msgspec.field(default_factory=list)
    actions: list[RankedAction] = msgspec.field(default_factory=list)
    not_checked: list[NotChecked] = msgspec.field(default_factory=list)
    execution_time: float = 0.0
    knowledge_base_version: str = ""
    error: ErrorInfo | None = None
    #: Where the report and the JSON lie (object URLs), once written.
    report: str | None = None
    result: str | None = None

    def all_analyses(self) -> list[Analysis]:
        return [a for agent in self.agent_results for a in agent.analysis]

    def rule_ids(self) -> set[str]:
        return {a.rule_id for a in self.all_analyses()}


class AnalysisOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    enable_training_analysis: bool = True
    enable_dataset_analysis: bool = True
    enable_deepchecks_analysis: bool = True
    #: Findings about these come first in the advisor's ranking (e.g. ["overfitting"]).
    optimization_focus: list[str] = msgspec.field(default_factory=list)
    #: Metric names, when the run's do not follow the usual spellings (train_loss, val_loss, ...).
    train_loss_metric: str | None = None
    val_loss_metric: str | None = None
    #: Each analyzer's own limit, and the whole analysis's: past it the result is "partial".
    agent_timeout_seconds: float = msgspec.field(default=30.0)
    total_timeout_seconds: float = msgspec.field(default=60.0)
    #: Log the report back to the MLflow run (artifacts under dropwire_analysis/).
    log_to_mlflow: bool = False
    report_format: Literal["markdown", "html"] = "markdown"

    def __post_init__(self) -> None:
        if not (0 < self.agent_timeout_seconds <= 600 and 0 < self.total_timeout_seconds <= 600):
            raise ValueError("agent_timeout_seconds and total_timeout_seconds must be in (0, 600]")


class MetricSeries(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    steps: list[int]
    values: list[float]


class DatasetSplit(msgspec.Struct, kw_only=True, frozen=True):
    size: int
    class_counts: dict[str, int] = msgspec.field(default_factory=dict)
    #: Per feature: mean, std, min, max.
    features: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    #: Content hashes of the examples (for overlap between splits).
    hashes: list[str] = msgspec.field(default_factory=list)


class DatasetArtifact(msgspec.Struct, kw_only=True, frozen=True):
    """dataset/dataset.json as training code logs it (core.artifacts writes it)."""

    splits: dict[str, DatasetSplit]
    task: str = "classification"


class RunData(msgspec.Struct, kw_only=True):
    """Everything analysis reads about one run."""

    run_id: str
    tracking_uri: str
    metrics: dict[str, MetricSeries]
    params: dict[str, str] = msgspec.field(default_factory=dict)
    dataset: DatasetArtifact | None = None
    #: Deepchecks result JSON documents by file name.
    deepchecks: dict[str, dict] = msgspec.field(default_factory=dict)
    #: Artifact paths found, and the expected ones that were not.
    artifacts: list[str] = msgspec.field(default_factory=list)
    missing: list[str] = msgspec.field(default_factory=list)


class AnalysisStatus(msgspec.Struct, kw_only=True):
    """Where an analysis stands (GET /api/v1/analyses/{id}/status)."""

    request_id: str
    #: queued | running | completed | partial | failed
    status: str
    run_id: str | None = None
    error: ErrorInfo | None = None
    result_url: str | None = None
    report_url: str | None = None
    #: The analysis's state history (who moved it, when, why), once it has one.
    history: list[dict] = msgspec.field(default_factory=list)
