"""The pure core of training analysis: what a run is made of (model), reading it from MLflow
(mlflow_reader), one analyzer per family (training, dataset, deepchecks), the integration
step and the advisor after them (pipeline), the shipped knowledge base, the artifacts
training code logs (artifacts) and the report a person reads (report)."""
