"""Batch inference: OpenAI's Files and Batch API, and batches dropped as JSONL files."""


# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.batches import states as _states
from dropwire.functions.batches.settings import BatchSettings as _BatchSettings
from dropwire.functions.platform.domain import Domain, SettingsSection

DOMAIN = Domain("batches", handlers="dropwire.functions.batches.handlers", api="dropwire.functions.batches.api",
                machines=_states.MACHINES, settings=SettingsSection("batches", _BatchSettings))
