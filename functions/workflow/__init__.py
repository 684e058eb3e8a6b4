"""Operating workflows of any kind: status, suspend and resume by hand, resume after a quota."""


# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.platform.domain import Domain

DOMAIN = Domain("workflow", handlers="dropwire.functions.workflow.handlers", api="dropwire.functions.workflow.api")
