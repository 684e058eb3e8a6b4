"""The runtime's own errors. Each maps to one HTTP status and the product's one error body."""

from __future__ import annotations

from dropwire.functions.kit.errors import DropwireError, NotFound


class InvalidUpload(DropwireError):
    """The upload is not a usable time-series CSV; the message names the line/column at fault."""

    http_status = 422
    code = "invalid_csv"


class UploadTooLarge(DropwireError):
    http_status = 413
    code = "upload_too_large"


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class DatasetGone(NotFound):
    """The dataset was deleted or evicted while a request for it waited."""

    code = "dataset_gone"


class IndexOutOfRange(DropwireError):
    http_status = 422
    code = "index_out_of_range"


class InvalidRange(DropwireError):
    http_status = 422
    code = "invalid_range"


class NonFiniteForecast(DropwireError):
    """The model's samples for a series went NaN or infinite (values too large to scale, or a
    broken model); no density can be estimated from them."""

    http_status = 422
    code = "non_finite_forecast"


class RequestTimedOut(DropwireError):
    http_status = 504
    code = "timeout"


class ShuttingDown(DropwireError):
    http_status = 503
    code = "shutting_down"


class ComputeFailed(DropwireError):
    http_status = 500
    code = "compute_failed"


class PortUnavailable(DropwireError):
    """runtime.host:runtime.port cannot be bound; `dropwire runtime serve` exits 1 before it loads anything."""

    code = "port_unavailable"


class ModelLoadError(DropwireError):
    """The configured model cannot be loaded; `dropwire runtime serve` exits non-zero."""

    http_status = 500
    code = "model_load_failed"


class TrainingError(DropwireError):
    code = "training_failed"
