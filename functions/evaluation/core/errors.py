"""The errors the evaluation core raises on purpose; each names the file, field or row at fault."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dropwire.functions.kit.errors import DropwireError

if TYPE_CHECKING:
    from dropwire.functions.evaluation.core.config import ConfigProblem
    from dropwire.functions.evaluation.core.issues import QualityIssue, QualityReport


class ConfigInvalid(DropwireError):
    """A config with one or more problems; ``problems`` lists every one, not just the first."""

    code = "config_invalid"

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        listed = "; ".join(f"{p.path}: {p.message}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"config {source} has {len(problems)} {noun}: {listed}",
            source=source,
            problems=[{"path": p.path, "message": p.message} for p in problems],
        )
        self.problems = problems


class DatasetUnreadable(DropwireError):
    """A dataset file that cannot be turned into a table (empty, binary, wrong encoding,
    wrong delimiter, missing columns). ``issues`` are ready for the quality report."""

    code = "dataset_unreadable"

    def __init__(self, issues: list[QualityIssue]) -> None:
        super().__init__(
            "; ".join(i.message for i in issues),
            issues=[{"file": i.file, "check": i.check, "message": i.message} for i in issues],
        )
        self.issues = issues


class DatasetInvalid(DropwireError):
    """Evaluation was asked of a dataset that fails the quality check."""

    code = "dataset_invalid"

    def __init__(self, report: QualityReport) -> None:
        errors = report.errors
        shown = "; ".join(i.message for i in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(
            f"dataset fails the quality check with {len(errors)} error(s): {shown}{more}",
            errors=len(errors),
        )
        self.report = report
