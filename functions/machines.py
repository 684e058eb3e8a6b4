"""Every domain's state machines: what the store validates transitions against. Kept apart
from catalog.py so that tools opening the store do not import every handler."""

from __future__ import annotations

from dropwire.functions.batches.states import MACHINES as BATCHES
from dropwire.functions.curation.states import MACHINES as CURATION
from dropwire.functions.evaluation.states import MACHINES as EVALUATION
from dropwire.functions.training_analysis.states import MACHINES as TRAINING_ANALYSIS

MACHINES = (*EVALUATION, *TRAINING_ANALYSIS, *BATCHES, *CURATION)
