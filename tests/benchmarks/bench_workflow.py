"""What the platform costs around an evaluation: a dataset dropped into the bucket folder of
a running emulator (product catalog, 2 workers) until its model is EVALUATION_COMPLETED
(event, admission, queued quality check, queued evaluation, Parquet + Excel + MLflow run,
every transition durable), against the same job run directly in one process (read, check,
evaluate, write the results and report, log the MLflow run) in the same run. The difference
is the platform's overhead: handler processes, two queued steps, durable commits."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from dropwire.functions.evaluation.core import (
    DatasetFiles,
    ReportContext,
    TrackingStore,
    check_dataset,
    evaluate_dataset,
    load_config,
    load_dataset,
    log_evaluation_run,
    write_excel_report,
    write_results,
)
from dropwire.functions.evaluation.core.samples import sample_config, sample_dataset
from dropwire.local_emulator.emulator import Emulator
from dropwire.local_emulator.settings import load_settings

SIZES = (1_000, 10_000, 100_000)
REPEATS = 3
WARM_UPS = 4


def _wait(emulator: Emulator, model_id: str, past_version: int, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = emulator.store.query("SELECT state, version FROM entity_states WHERE kind = 'model' AND entity_id = ?",
                                    [model_id])
        if rows and rows[0][1] > past_version and rows[0][0] in ("EVALUATION_COMPLETED", "AWAITING_DATA_FIX",
                                                                 "EVALUATION_FAILED"):
            if rows[0][0] != "EVALUATION_COMPLETED":
                raise RuntimeError(f"{model_id} ended in {rows[0][0]}")
            return time.perf_counter()
        time.sleep(0.005)
    raise RuntimeError(f"{model_id} did not finish within {timeout}s")


def _direct(config_bytes: bytes, csv_path: Path, out: Path, tracking: TrackingStore) -> float:
    started = time.perf_counter()
    config = load_config(config_bytes, source="config.json")
    dataset = load_dataset(config, DatasetFiles(dataset=str(csv_path)))
    assert check_dataset(dataset).passed
    evaluation = evaluate_dataset(dataset)
    write_results(evaluation, f"{out}/")
    report = write_excel_report(evaluation, ReportContext(use_case="bench", model_name="m", model_version="1",
                                                          config_hash="x", files=[str(csv_path)], evaluated_at="now"),
                                f"{out}/report.xlsx")
    log_evaluation_run(tracking, "bench-direct", use_case="bench", model_name="m", model_version="1", config_hash="x",
                       metrics=evaluation.metrics, report_url=report)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(environ={"DROPWIRE_DATA_DIR": str(root / "data"), "DROPWIRE_QUEUE__WORKERS": "2"})
        config = json.dumps(sample_config("bench")).encode()
        tracking = TrackingStore(tracking_uri=settings.mlflow_uri, artifact_location=(root / "direct-art").as_uri())
        with Emulator(settings, serve_http=False) as emulator:
            objects, name = emulator.objects, settings.events.bucket
            for key, content, kind, entity_id, state in (
                    ("use-case.json", json.dumps({"name": "bench", "team_email": "b@example.com"}).encode(),
                     "use_case", "bench", "AWAITING_CONFIG"),
                    ("config.json", config, "use_case", "bench", "CONFIG_VALIDATED"),
                    ("models/m/register.json", json.dumps({"name": "m", "version": "1"}).encode(), "model", "bench/m",
                     "REGISTERED")):
                objects.write_bytes(name, f"use-cases/bench/{key}", content)
                _wait_state(emulator, kind, entity_id, state)
            print(f"{'records':>9} {'drop→completed s':>17} {'direct s':>9} {'overhead s':>11} {'ratio':>6}")
            # Warm-up, not counted: each handler process imports MLflow (~2 s) on its first evaluation.
            for seed in range(WARM_UPS):
                version = emulator.store.states.current("model", "bench/m")[1]
                objects.write_bytes(name, "use-cases/bench/models/m/dataset.csv",
                                    sample_dataset(100, error_rate=0.05, seed=seed).write_csv().encode())
                _wait(emulator, "bench/m", version)
            for n in SIZES:
                platform, direct = [], []
                for repeat in range(REPEATS):
                    # Other data each time: the same bytes would be the same object version (a duplicate).
                    csv_path = root / f"d{n}-{repeat}.csv"
                    sample_dataset(n, error_rate=0.05, seed=n + repeat).write_csv(csv_path)
                    version = emulator.store.states.current("model", "bench/m")[1]
                    started = time.perf_counter()
                    objects.write_bytes(name, "use-cases/bench/models/m/dataset.csv", csv_path.read_bytes())
                    platform.append(_wait(emulator, "bench/m", version) - started)
                    direct.append(_direct(config, csv_path, root / f"out{n}-{repeat}", tracking))
                p, d = sorted(platform)[REPEATS // 2], sorted(direct)[REPEATS // 2]
                print(f"{n:>9,} {p:>17.2f} {d:>9.2f} {p - d:>11.2f} {p / d:>5.1f}x", flush=True)


def _wait_state(emulator: Emulator, kind: str, entity_id: str, state: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if emulator.store.query("SELECT 1 FROM entity_states WHERE kind = ? AND entity_id = ? AND state = ?",
                                [kind, entity_id, state]):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{kind} {entity_id} did not reach {state}")
