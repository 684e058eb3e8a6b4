from __future__ import annotations

import pytest

from tests.training_analysis import runs


@pytest.fixture(scope="session")
def mlflow_runs(tmp_path_factory) -> tuple[runs.Store, dict[str, str]]:
    """The five runs, trained once per session into one real MLflow store."""
    where = runs.store(tmp_path_factory.mktemp("mlflow"))
    made = {name: make(where) for name, make in (("healthy", runs.healthy), ("overfitting", runs.overfitting),
                                                 ("diverging", runs.diverging), ("tiny_imbalanced", runs.tiny_imbalanced),
                                                 ("missing_artifacts", runs.missing_artifacts))}
    return where, made
