"""Training-run analysis (seed 2): a run's metrics and artifacts in MLflow are diagnosed
(overfitting, divergence, plateaus, dataset and data-quality problems), explained and turned
into ranked actions. ``client`` and ``lightning`` are for training code and import neither
litestar nor duckdb."""
