"""`dropwire runtime train --data FILE` logs to a real local MLflow store and registers a model
version; the runtime loads registered versions back (state_dict only, nothing unpickled)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from dropwire.local_emulator.cli import app
from dropwire.runtime.errors import ModelLoadError
from dropwire.runtime.model import load_model
from dropwire.runtime.model_source import ModelSource, open_model
from dropwire.runtime.settings import RuntimeSettings
from dropwire.runtime.synthetic import generated_csv
from tests.runtime.conftest import LOG_FOR_TESTS


def test_train_registers_versions_the_runtime_can_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    csv = tmp_path / "sales.csv"
    csv.write_bytes(generated_csv(300, series=2, seed=31))
    for name in [name for name in os.environ if name.startswith("DROPWIRE_")]:
        monkeypatch.delenv(name)
    # The real command, in this process (a subprocess would import torch and mlflow again).
    runner = CliRunner(env={"DROPWIRE_DATA_DIR": str(data_dir), "COLUMNS": "1000"})
    command = ["runtime", "train", "--data", str(csv), "--steps", "40", "--context-length", "8",
               "--hidden-size", "8", "--num-layers", "1"]
    for version in ("1", "2"):
        done = runner.invoke(app, command)
        assert done.exit_code == 0, done.output
        assert f"registered 'dropwire-forecaster' version {version}" in done.output
    assert "DROPWIRE_RUNTIME__MODEL_NAME=dropwire-forecaster DROPWIRE_RUNTIME__MODEL_VERSION=2" in done.output
    missing = runner.invoke(app, ["runtime", "train", "--data", str(tmp_path / "nothing.csv")])
    assert missing.exit_code != 0 and "is not a file" in str(missing.exception)

    tracking_uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"

    def source(version: str, name: str = "dropwire-forecaster") -> ModelSource:
        settings = RuntimeSettings(model_name=name, model_version=version)
        return ModelSource.from_settings(settings, default_path=tmp_path / "unused.pt", tracking_uri=tracking_uri)

    first = open_model(source("1"), "cpu", LOG_FOR_TESTS)
    assert (first.version, first.source, first.context_length) == ("dropwire-forecaster/1", "mlflow:dropwire-forecaster/1", 8)
    assert first.meta.trained_on.startswith("file:sales.csv:sha256=")
    assert open_model(source(""), "cpu", LOG_FOR_TESTS).version == "dropwire-forecaster/2"  # latest
    with pytest.raises(ModelLoadError, match="registered model 'nobody' has no versions"):
        open_model(source("", name="nobody"), "cpu", LOG_FOR_TESTS)
    with pytest.raises(ModelLoadError, match="version 9"):
        open_model(source("9"), "cpu", LOG_FOR_TESTS)

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(client.get_model_version("dropwire-forecaster", "1").run_id)
    assert run.data.params["rows"] == "300" and run.data.params["series"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "train_nll")) == 20
    # The artifacts live under the data dir, beside the store.
    assert list((data_dir / "mlartifacts").rglob("forecaster.pt"))


def test_make_default_model_writes_a_loadable_state_dict_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("DROPWIRE_")]:
        monkeypatch.delenv(name)
    runner = CliRunner(env={"DROPWIRE_DATA_DIR": str(tmp_path), "DROPWIRE_RUNTIME__DEFAULT_MODEL_TRAIN_STEPS": "20",
                            "COLUMNS": "1000"})
    made = runner.invoke(app, ["runtime", "make-default-model"])
    assert made.exit_code == 0, made.output
    path = tmp_path / "models" / "default-forecaster.pt"
    assert f"default model written to {path}" in made.output
    again = runner.invoke(app, ["runtime", "make-default-model"])
    assert "already at" in again.output
    model = load_model(path, torch.device("cpu"))
    assert model.meta.train_steps == 20 and model.meta.trained_on.startswith("generated:")
    assert model.version.startswith("sha256:")
