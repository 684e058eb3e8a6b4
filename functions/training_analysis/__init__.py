"""Training-run analysis (seed 2): a run's metrics and artifacts in MLflow are diagnosed
(overfitting, divergence, plateaus, dataset and data-quality problems), explained and turned
into ranked actions. ``client`` and ``lightning`` are for training code and import neither
litestar nor duckdb."""


# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.platform.domain import Domain, SettingsSection
from dropwire.functions.training_analysis import states as _states
from dropwire.functions.training_analysis.settings import TrainingAnalysisSettings as _TrainingAnalysisSettings

DOMAIN = Domain("training_analysis", handlers="dropwire.functions.training_analysis.handlers",
                api="dropwire.functions.training_analysis.api", machines=_states.MACHINES,
                settings=SettingsSection("training", _TrainingAnalysisSettings))
