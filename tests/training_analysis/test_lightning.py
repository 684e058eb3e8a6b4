"""The Lightning callback in a real Lightning fit logged by a real MLFlowLogger: at fit end it
logs the analysis artifacts and gets the analysis from the emulator (sync and async); with
the server down the fit still completes (fallback), or fails when strict."""

from __future__ import annotations

import socket

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dropwire.functions.training_analysis.client import PollingConfig, RetryConfig, ServerUnavailableError, TrainingAnalysisClient
from dropwire.functions.training_analysis.lightning import TrainingAnalysisCallback

pytestmark = pytest.mark.slow
FAST_POLLING = PollingConfig(initial_interval=0.1, max_interval=0.5, max_wait_time=120)


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (500,), generator=generator)
    x = torch.randn(2, 4, generator=generator)[y] * 2 + torch.randn(500, 4, generator=generator)
    return (DataLoader(TensorDataset(x[:400], y[:400]), batch_size=50),
            DataLoader(TensorDataset(x[400:], y[400:]), batch_size=100))


def fit(tmp_path, where, callback: TrainingAnalysisCallback, epochs: int = 8) -> MLFlowLogger:
    torch.manual_seed(5)
    logger = MLFlowLogger(experiment_name="lightning-tests", tracking_uri=where.uri, artifact_location=where.artifacts)
    trainer = pl.Trainer(max_epochs=epochs, logger=logger, callbacks=[callback], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    train, val = loaders()
    trainer.fit(Classifier(), train, val)
    return logger


def test_a_real_fit_is_analysed_at_its_end(gateway, mlflow_runs, tmp_path):
    where, _ = mlflow_runs
    callback = TrainingAnalysisCallback(TrainingAnalysisClient(gateway[1], polling=FAST_POLLING))
    logger = fit(tmp_path, where, callback)
    result = callback.result
    assert result is not None and result.status == "completed" and result.run_id == logger.run_id
    assert not [a for a in result.all_analyses() if a.findings.severity != "info"], result.all_analyses()
    artifacts = {a.path for folder in ("training_artifacts", "dataset")
                 for a in MlflowClient(where.uri).list_artifacts(logger.run_id, folder)}
    assert {"training_artifacts/metrics.csv", "training_artifacts/params.yaml", "dataset/dataset.json"} <= artifacts
    assert callback.history["val_loss"][-1][0] == 7 and len(callback.history["train_loss"]) == 8
    assert result.warnings == ["Deepchecks artifacts not found - skipping data quality analysis"]


def test_async_mode_returns_at_fit_end_and_polls_later(gateway, mlflow_runs, tmp_path):
    where, _ = mlflow_runs
    callback = TrainingAnalysisCallback(TrainingAnalysisClient(gateway[1], polling=FAST_POLLING), analysis_mode="async",
                                        analysis_options={"optimization_focus": ["plateau"]})
    fit(tmp_path, where, callback, epochs=4)
    assert callback.request_id and callback.result is None
    assert callback.wait_for_result().status == "completed"


def test_the_fit_never_fails_because_analysis_is_unavailable_unless_strict(mlflow_runs, tmp_path):
    where, _ = mlflow_runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    quick = RetryConfig(max_retries=1, base_delay=0.01)
    callback = TrainingAnalysisCallback(TrainingAnalysisClient(down, retry=quick))
    fit(tmp_path, where, callback, epochs=2)
    assert callback.result is None and len(callback.client.attempts) == 2
    strict = TrainingAnalysisCallback(TrainingAnalysisClient(down, retry=quick, fallback="strict"))
    with pytest.raises(ServerUnavailableError):
        fit(tmp_path, where, strict, epochs=2)
