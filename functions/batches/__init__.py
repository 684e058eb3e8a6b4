"""Batch inference: OpenAI's Files and Batch API, and batches dropped as JSONL files."""

# What other domains may use of batches (import these from `dropwire.functions.batches`, never
# from its modules). Loaded on first use, so importing the package stays light.
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dropwire.functions.batches.handlers import BUCKET, OUTPUT_PREFIX, resume_key
    from dropwire.functions.batches.reads import batch as batch_info
    from dropwire.functions.batches.reads import file as batch_file
    from dropwire.functions.batches.reads import status as batch_status
    from dropwire.functions.batches.settings import BatchSettings
    from dropwire.functions.batches.states import KIND, TERMINAL, BatchState

__all__ = ["BUCKET", "KIND", "OUTPUT_PREFIX", "TERMINAL", "BatchSettings", "BatchState", "batch_file", "batch_info",
           "batch_status", "resume_key"]

#: Published name -> its function in reads.py (a batch's record, its file's record, its status).
_READS = {"batch_info": "batch", "batch_file": "file", "batch_status": "status"}


def __getattr__(name: str) -> Any:
    if name in ("BUCKET", "OUTPUT_PREFIX", "resume_key"):
        from dropwire.functions.batches import handlers as module
    elif name in ("KIND", "TERMINAL", "BatchState"):
        from dropwire.functions.batches import states as module
    elif name == "BatchSettings":
        from dropwire.functions.batches import settings as module
    elif name in _READS:
        from dropwire.functions.batches import reads

        return getattr(reads, _READS[name])
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)

# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.batches import states as _states
from dropwire.functions.batches.settings import BatchSettings as _BatchSettings
from dropwire.functions.platform.domain import Domain, SettingsSection

DOMAIN = Domain("batches", handlers="dropwire.functions.batches.handlers", api="dropwire.functions.batches.api",
                machines=_states.MACHINES, settings=SettingsSection("batches", _BatchSettings))
