"""A PyTorch Lightning callback (seed 2, workflows 1 and 2): it records every epoch's logged
metrics, and at ``on_fit_end`` writes the analysis artifacts (metrics.csv, params.yaml, the
datasets' statistics), logs them to the run of the trainer's MLFlowLogger, requests the
analysis (sync: waits and prints a summary; async: returns at once, ``result()`` polls) and
keeps the answer in ``self.result``. Analysis that is unavailable never fails the fit,
unless the client is strict."""

from __future__ import annotations

import logging
import tempfile
from typing import Any, Literal

import lightning.pytorch as pl

from dropwire.functions.training_analysis.client import TrainingAnalysisClient
from dropwire.functions.training_analysis.core.artifacts import log_artifacts, split_stats_from_dataset, write_artifacts
from dropwire.functions.training_analysis.core.model import AnalysisResult
from dropwire.functions.training_analysis.torch_helper import request_analysis

log = logging.getLogger("dropwire.training_analysis")


class TrainingAnalysisCallback(pl.Callback):
    def __init__(self, client: TrainingAnalysisClient, *, analysis_mode: Literal["sync", "async"] = "sync",
                 analysis_options: dict | None = None, describe_datasets: bool = True) -> None:
        self.client = client
        self.analysis_mode = analysis_mode
        self.analysis_options = analysis_options
        self.describe_datasets = describe_datasets
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.result: AnalysisResult | None = None
        self.request_id: str | None = None
        self.run_id: str | None = None

    def _record(self, trainer: pl.Trainer) -> None:
        for name, value in trainer.callback_metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            points = self.history.setdefault(name, [])
            if points and points[-1][0] == trainer.current_epoch:
                points[-1] = (trainer.current_epoch, number)  # one point per epoch, the latest value
            else:
                points.append((trainer.current_epoch, number))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = _mlflow_logger(trainer)
        if logger is None:
            log.warning("TrainingAnalysisCallback needs an MLFlowLogger on the trainer; no analysis requested")
            return
        run_id, tracking_uri = logger.run_id, logger._tracking_uri
        assert run_id is not None  # MLFlowLogger.run_id starts a run when there is none
        self.run_id = run_id
        try:
            with tempfile.TemporaryDirectory(prefix="dropwire-artifacts-") as tmp:
                write_artifacts(tmp, history=self.history, params=_params(pl_module),
                                splits=self._splits(trainer) if self.describe_datasets else None)
                log_artifacts(tracking_uri, run_id, tmp)
        except Exception as exc:
            if self.client.fallback == "strict":
                raise
            log.warning("could not log the analysis artifacts to run %s: %s", self.run_id, exc)
        answer = request_analysis(self.client, run_id, tracking_uri, mode=self.analysis_mode,
                                  analysis_options=self.analysis_options)
        if self.analysis_mode == "async":
            self.request_id = answer if isinstance(answer, str) else None
        else:
            self.result = answer if isinstance(answer, AnalysisResult) else None

    def wait_for_result(self) -> AnalysisResult | None:
        """The async analysis's result, polling as the client's PollingConfig says."""
        if self.result is None and self.request_id is not None:
            self.result = self.client.wait_for_result(self.request_id)
        return self.result

    @staticmethod
    def _splits(trainer: pl.Trainer) -> dict[str, Any] | None:
        splits = {}
        for name, loader in (("train", trainer.train_dataloader), ("val", trainer.val_dataloaders)):
            loader = loader[0] if isinstance(loader, (list, tuple)) and loader else loader
            dataset = getattr(loader, "dataset", None)
            if dataset is not None and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
                try:
                    splits[name] = split_stats_from_dataset(dataset)
                except (TypeError, ValueError, IndexError) as exc:
                    log.info("split %s not described: %s", name, exc)
        return splits or None


def _mlflow_logger(trainer: pl.Trainer):
    from lightning.pytorch.loggers import MLFlowLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


def _params(module: pl.LightningModule) -> dict[str, Any]:
    return {str(k): v for k, v in dict(getattr(module, "hparams", {}) or {}).items()}
