"""The pure core of model evaluation: config, dataset reading, quality check, metrics, the
Excel report and MLflow logging. Plain functions over paths/URLs, frames and msgspec Structs:
no database, threads or HTTP here; the workflow handlers call these."""

from dropwire.functions.evaluation.core.config import (
    CategoryMatch,
    ColumnNaming,
    ConfigProblem,
    DatasetRules,
    DateMatch,
    EvaluationConfig,
    Exact,
    FieldSpec,
    MatchRule,
    NormalizedText,
    Numeric,
    config_hash,
    load_config,
    read_config,
)
from dropwire.functions.evaluation.core.dataset import Dataset, DatasetFiles, load_dataset
from dropwire.functions.evaluation.core.errors import ConfigInvalid, DatasetInvalid, DatasetUnreadable
from dropwire.functions.evaluation.core.issues import QualityIssue, QualityReport, SourceFile
from dropwire.functions.evaluation.core.metrics import (
    Evaluation,
    EvaluationMetrics,
    FieldMetrics,
    MacroMetrics,
    MicroMetrics,
    evaluate,
    evaluate_dataset,
)
from dropwire.functions.evaluation.core.quality import check_dataset, check_quality
from dropwire.functions.evaluation.core.report import ReportContext, ResultFiles, write_excel_report, write_results
from dropwire.functions.evaluation.core.template import render_template
from dropwire.functions.evaluation.core.tracking import TrackingStore, local_tracking_store, log_evaluation_run

__all__ = [
    "CategoryMatch", "ColumnNaming", "ConfigInvalid", "ConfigProblem", "Dataset", "DatasetFiles", "DatasetInvalid",
    "DatasetRules", "DatasetUnreadable", "DateMatch", "Evaluation", "EvaluationConfig", "EvaluationMetrics", "Exact",
    "FieldMetrics", "FieldSpec", "MacroMetrics", "MatchRule", "MicroMetrics", "NormalizedText", "Numeric",
    "QualityIssue", "QualityReport", "ReportContext", "ResultFiles", "SourceFile", "TrackingStore", "check_dataset",
    "check_quality", "config_hash", "evaluate", "evaluate_dataset", "load_config", "load_dataset",
    "local_tracking_store", "log_evaluation_run", "read_config", "render_template", "write_excel_report",
    "write_results",
]  # fmt: skip
