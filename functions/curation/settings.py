"""The curation domain's settings (section `curation`: DROPWIRE_CURATION__<FIELD>). Handlers get
them as `config["curation"]`. The token is masked by `dropwire settings` (its name holds
"token") and never logged or stored."""

from __future__ import annotations

from typing import Any

import msgspec

MB = 1024 * 1024


class CurationSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Label Studio's base URL and an API token (a legacy token, sent as "Authorization: Token ...").
    # Empty URL: exports are written to the bucket only.
    label_studio_url: str = ""
    label_studio_token: str = ""
    # Project titles: "<prefix> <batch name or id> (<schema>) [<export id>]", the readable parts
    # cut to fit Label Studio's 50 characters (handlers.project_title).
    project_prefix: str = "dropwire"
    # Named schemas besides the built-in free_text, e.g. {"sentiment": {"kind": "classification",
    # "labels": ["positive", "negative"]}} (JSON in the environment variable).
    schemas: dict[str, Any] = {}
    # A completed batch whose metadata names `curation_schema` is exported by itself.
    auto_export: bool = True
    # Import requests: at most this many tasks and about this many bytes each (Label Studio
    # refuses bodies over its DATA_UPLOAD_MAX_MEMORY_SIZE, by default 250 MB).
    import_chunk_tasks: int = 500
    import_chunk_bytes: int = 8 * MB
    # One call: timeout, then retries on connection errors, 408/429/5xx with backoff between
    # half and all of base·2^(n−1), capped, or what Retry-After says.
    request_timeout_seconds: float = 30.0
    max_attempts: int = 4
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    # How long the export fired by a batch's output file waits for the batch to be committed
    # completed (its finalize step writes the file just before it commits).
    batch_settle_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.label_studio_url and "://" not in self.label_studio_url:
            raise ValueError(f"curation.label_studio_url must be a URL like http://host:8080, got "
                             f"{self.label_studio_url!r}")
        if self.label_studio_url and not self.label_studio_token:
            raise ValueError("curation.label_studio_url needs curation.label_studio_token")
        if self.import_chunk_tasks < 1 or self.import_chunk_bytes < 1 or self.max_attempts < 1:
            raise ValueError("curation.import_chunk_tasks, import_chunk_bytes and max_attempts must be positive")


def curation_settings(config: dict[str, Any]) -> CurationSettings:
    return msgspec.convert(config.get("curation", {}), CurationSettings)
