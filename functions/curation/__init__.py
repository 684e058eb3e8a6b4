"""Curation (seed 5's curation app): batch results into Label Studio for review, reviewed labels back as ground truth."""


# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.curation import states as _states
from dropwire.functions.curation.settings import CurationSettings as _CurationSettings
from dropwire.functions.platform.domain import Domain, SettingsSection

DOMAIN = Domain("curation", handlers="dropwire.functions.curation.handlers", machines=_states.MACHINES,
                settings=SettingsSection("curation", _CurationSettings))
