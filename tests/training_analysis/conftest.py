from __future__ import annotations

from collections.abc import Iterator

import pytest

from dropwire.local_emulator.emulator import Emulator
from tests.platform.conftest import emulator_settings
from tests.training_analysis import runs


@pytest.fixture(scope="session")
def mlflow_runs(tmp_path_factory) -> tuple[runs.Store, dict[str, str]]:
    """The five runs, trained once per session into one real MLflow store."""
    where = runs.store(tmp_path_factory.mktemp("mlflow"))
    made = {name: make(where) for name, make in (("healthy", runs.healthy), ("overfitting", runs.overfitting),
                                                 ("diverging", runs.diverging), ("tiny_imbalanced", runs.tiny_imbalanced),
                                                 ("missing_artifacts", runs.missing_artifacts))}
    return where, made


@pytest.fixture(scope="session")
def gateway(tmp_path_factory) -> Iterator[tuple[Emulator, str]]:
    """One emulator serving the product's catalog for the session: (emulator, base URL). The
    limits are small so that their tests need few analyses: 2 at once, Retry-After 1 s."""
    settings = emulator_settings(tmp_path_factory.mktemp("emulator"), DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                                 DROPWIRE_QUEUE__WORKERS="3",
                                 DROPWIRE_TRAINING__MAX_CONCURRENT_ANALYSES="2",
                                 DROPWIRE_TRAINING__MLFLOW_RETRY_AFTER_SECONDS="1",
                                 DROPWIRE_TRAINING__MLFLOW_TIMEOUT_SECONDS="60")
    with Emulator(settings) as emulator:
        yield emulator, f"http://127.0.0.1:{settings.http.port}"
