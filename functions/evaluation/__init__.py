"""The pure core of model evaluation: config, dataset reading, quality check, metrics, the
Excel report and MLflow logging. Plain functions over paths/URLs, frames and msgspec Structs:
no database, threads or HTTP here; the workflow handlers call these."""

from functions.evaluation.config import (
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
from functions.evaluation.dataset import Dataset, DatasetFiles, load_dataset
from functions.evaluation.errors import ConfigInvalid, DatasetInvalid, DatasetUnreadable
from functions.evaluation.issues import QualityIssue, QualityReport, SourceFile
from functions.evaluation.metrics import (
    Evaluation,
    EvaluationMetrics,
    FieldMetrics,
    MacroMetrics,
    MicroMetrics,
    evaluate,
    evaluate_dataset,
)
from functions.evaluation.quality import check_dataset, check_quality
from functions.evaluation.report import ReportContext, ResultFiles, write_excel_report, write_results
from functions.evaluation.template import render_template
from functions.evaluation.tracking import TrackingStore, local_tracking_store, log_evaluation_run

__all__ = [
    "CategoryMatch", "ColumnNaming", "ConfigInvalid", "ConfigProblem", "Dataset", "DatasetFiles", "DatasetInvalid",
    "DatasetRules", "DatasetUnreadable", "DateMatch", "Evaluation", "EvaluationConfig", "EvaluationMetrics", "Exact",
    "FieldMetrics", "FieldSpec", "MacroMetrics", "MatchRule", "MicroMetrics", "NormalizedText", "Numeric",
    "QualityIssue", "QualityReport", "ReportContext", "ResultFiles", "SourceFile", "TrackingStore", "check_dataset",
    "check_quality", "config_hash", "evaluate", "evaluate_dataset", "load_config", "load_dataset",
    "local_tracking_store", "log_evaluation_run", "read_config", "render_template", "write_excel_report",
    "write_results",
]  # fmt: skip
