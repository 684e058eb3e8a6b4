"""Real, tiny torch training runs logged to a real MLflow store (seconds each): one healthy,
one that overfits, one that diverges (learning rate too high), one with a tiny validation
split of imbalanced classes, one logged without the analysis artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dropwire.functions.training_analysis.torch_helper import TrainingRecorder

# Tiny models: one thread is faster than many contending for a shared machine's cores.
torch.set_num_threads(1)

# A Deepchecks SuiteResult as to_json() writes it (shape of deepchecks 0.18), every condition passed.
PASSING_DEEPCHECKS = {"name": "Data Integrity", "type": "SuiteResult", "results": [
    {"type": "CheckResult", "check": {"name": "Mixed Nulls", "params": {}}, "header": "Mixed Nulls", "value": {},
     "conditions_results": [{"Status": "PASS", "Condition": "Number of different null types is less or equal to 1",
                             "More Info": "Passed for 2 relevant columns"}]},
    {"type": "CheckResult", "check": {"name": "Data Duplicates", "params": {}}, "header": "Data Duplicates", "value": 0.0,
     "conditions_results": [{"Status": "PASS", "Condition": "Duplicate data ratio is less or equal to 0%", "More Info": ""}]}]}


@dataclass(frozen=True)
class Store:
    uri: str
    artifacts: str


def store(root: Path) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    return Store(uri=f"sqlite:///{root / 'mlflow.db'}", artifacts=(root / "artifacts").resolve().as_uri())


def _recorder(where: Store, name: str, params: dict) -> TrainingRecorder:
    return TrainingRecorder(where.uri, experiment="analysis-tests", artifact_location=where.artifacts, params=params,
                            run_name=name)


def _fit(recorder: TrainingRecorder, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, train: TensorDataset,
         val: TensorDataset, epochs: int, batch: int) -> None:
    x, y = train.tensors
    vx, vy = val.tensors
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, norms = 0.0, []
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))))
            optimizer.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(vx), vy))
        recorder.log(epoch, train_loss=total / len(x), val_loss=val_loss, grad_norm=sum(norms) / len(norms),
                     lr=optimizer.param_groups[0]["lr"])


def _blobs(n: int, dims: int, seed: int, *, weights=(0.5, 0.5), spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=generator)
    centres = torch.randn(len(weights), dims, generator=generator) * 2.0
    return centres[labels] + spread * torch.randn(n, dims, generator=generator), labels


def healthy(where: Store, *, artifacts: bool = True) -> str:
    torch.manual_seed(1)
    x, y = _blobs(800, 4, seed=1, spread=1.5)
    train, val = TensorDataset(x[:640], y[:640]), TensorDataset(x[640:], y[640:])
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    params = {"lr": 0.01, "optimizer": "adam", "epochs": 25}
    recorder = _recorder(where, "healthy" if artifacts else "missing-artifacts", params)
    _fit(recorder, model, torch.optim.Adam(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), train, val, 25, 64)
    if artifacts:
        recorder.describe_datasets(train=train, val=val)
        recorder.mlflow.log_dict(recorder.run_id, PASSING_DEEPCHECKS, "deepchecks/data_integrity.json")
    recorder.finish(log_artifacts=artifacts)
    return recorder.run_id


def overfitting(where: Store) -> str:
    torch.manual_seed(2)
    x, y = _blobs(340, 20, seed=2, spread=3.0)
    train, val = TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:])
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 2))
    recorder = _recorder(where, "overfitting", {"lr": 0.003, "optimizer": "adam", "epochs": 120})
    _fit(recorder, model, torch.optim.Adam(model.parameters(), lr=0.003), nn.CrossEntropyLoss(), train, val, 120, 40)
    recorder.describe_datasets(train=train, val=val)
    recorder.finish()
    return recorder.run_id


def diverging(where: Store) -> str:
    torch.manual_seed(3)
    generator = torch.Generator().manual_seed(3)
    x = 3.0 * torch.randn(600, 8, generator=generator)
    y = x @ torch.randn(8, 1, generator=generator) + 0.1 * torch.randn(600, 1, generator=generator)
    train, val = TensorDataset(x[:480], y[:480]), TensorDataset(x[480:], y[480:])
    model = nn.Linear(8, 1)
    recorder = _recorder(where, "diverging", {"lr": 0.2, "optimizer": "sgd", "epochs": 20})
    _fit(recorder, model, torch.optim.SGD(model.parameters(), lr=0.2), nn.MSELoss(), train, val, 20, 480)
    recorder.describe_datasets(train=train, val=val)
    recorder.finish()
    return recorder.run_id


def tiny_imbalanced(where: Store) -> str:
    torch.manual_seed(4)
    x, y = _blobs(1000, 4, seed=4, weights=(0.95, 0.05), spread=1.5)
    train, val = TensorDataset(x[:985], y[:985]), TensorDataset(x[985:], y[985:])
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    recorder = _recorder(where, "tiny-imbalanced", {"lr": 0.01, "optimizer": "adam", "epochs": 20})
    _fit(recorder, model, torch.optim.Adam(model.parameters(), lr=0.01), nn.CrossEntropyLoss(), train, val, 20, 64)
    recorder.describe_datasets(train=train, val=val)
    recorder.finish()
    return recorder.run_id


def missing_artifacts(where: Store) -> str:
    return healthy(where, artifacts=False)
