"""Forecast precompute end to end: a real `dropwire runtime serve` process (CPU, tiny model)
and a real emulator serving the product's catalog, pointed at it through its settings."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest

from dropwire.functions.forecasts.handlers import ForecastManifest
from dropwire.runtime.synthetic import generated_csv
from dropwire.runtime.training import train_default_model
from tests.conftest import wait_for
from tests.platform.conftest import free_port
from tests.runtime.conftest import TINY_CONTEXT, RuntimeProcess, start_runtime, stop_runtime

pytestmark = pytest.mark.slow

HORIZON = 6  # tests.runtime.conftest.SMALL


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    model = tmp_path_factory.mktemp("model") / "tiny.pt"
    train_default_model(model, steps=60, seed=0, context_length=TINY_CONTEXT, hidden_size=16, num_layers=1)
    process = start_runtime(tmp_path_factory.mktemp("runtime-data"), model_path=model)
    yield process
    stop_runtime(process)


def catalog_emulator(start_emulator, runtime_port: int):
    return start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions", DROPWIRE_RUNTIME__HOST="127.0.0.1",
                          DROPWIRE_RUNTIME__PORT=str(runtime_port))


def outcomes(emulator, key: str) -> list[tuple[str, str, str | None]]:
    rows = emulator.store.query("SELECT source, outcome, error, event FROM invocations WHERE function = 'forecast' "
                                "ORDER BY started_at")
    return [(source, outcome, error) for source, outcome, error, event in rows if key in str(event)]


def manifest(bucket: Path, name: str) -> ForecastManifest:
    return msgspec.json.decode((bucket / "forecast-results" / name / "manifest.json").read_bytes(), type=ForecastManifest)


def test_a_dropped_csv_becomes_parquet_and_a_new_model_version_reprocesses_it(start_emulator, runtime: RuntimeProcess):
    emulator, http = catalog_emulator(start_emulator, int(runtime.url.rsplit(":", 1)[1]))
    bucket = emulator.settings.bucket_path
    model_version = runtime.stats()["model"]["version"]
    (bucket / "forecasts" / "team").mkdir(parents=True)
    content = generated_csv(70, series=2, seed=21)
    (bucket / "forecasts" / "team" / "x.csv").write_bytes(content)
    (bucket / "forecasts" / "y.csv").write_bytes(generated_csv(40, seed=22))
    (bucket / "forecasts" / "bad.csv").write_bytes(b"timestamp,a\n2024-01-01,1\n2024-01-01,2\n")

    wait_for(lambda: outcomes(emulator, "forecasts/team/x.csv") == [("upload", "succeeded", None)]
             and outcomes(emulator, "forecasts/y.csv") == [("upload", "succeeded", None)], timeout=60,
             what="both datasets to be precomputed")
    written = manifest(bucket, "team/x")
    first, last = TINY_CONTEXT - 1, 69
    assert (written.source_key, written.source_sha256) == ("forecasts/team/x.csv", hashlib.sha256(content).hexdigest())
    assert (written.model_version, written.first_index, written.last_index) == (model_version, first, last)
    assert written.parts == ["forecast-results/team/x/part-00000.parquet"]
    frame = pl.read_parquet(bucket / written.parts[0])
    assert frame.height == written.rows == (last - first + 1) * 2 * HORIZON
    assert frame.group_by("series").agg(pl.col("index").unique().sort()).sort("series").to_dicts() == [
        {"series": name, "index": list(range(first, last + 1))} for name in ("series_0", "series_1")]
    assert frame["step"].unique().sort().to_list() == list(range(1, HORIZON + 1))
    assert frame.select((pl.col("timestamp") - pl.col("origin") == pl.duration(hours=pl.col("step"))).all()).item()
    assert frame["origin"].min() == datetime(2024, 1, 1) + timedelta(hours=first)
    assert (frame["q5"] <= frame["q50"]).all() and (frame["q50"] <= frame["q95"]).all()
    assert frame["mean"].is_finite().all() and (frame["std"] > 0).all()
    assert frame["model_version"].unique().to_list() == [model_version]
    assert manifest(bucket, "y").model_version == model_version

    # A CSV the runtime refuses is not retried: one attempt, then the dead letters with its reason.
    wait_for(lambda: any(d["name"] == "fn:forecast" for d in http.get("/dead-letters").json()),
             what="the bad CSV's dead letter")
    letter = next(d for d in http.get("/dead-letters").json() if d["name"] == "fn:forecast")
    assert letter["attempts"] == 1 and letter["args"]["event"]["key"] == "forecasts/bad.csv"
    assert "the forecast runtime refused local/forecasts/bad.csv (422)" in letter["last_error"]
    assert "line 3, column 'timestamp': duplicate timestamp" in letter["last_error"]

    # Results from an older model are re-queued by the schedule; current ones are left alone.
    stale = msgspec.structs.replace(written, model_version="older-model")
    (bucket / "forecast-results" / "team" / "x" / "manifest.json").write_bytes(msgspec.json.encode(stale))
    fired_at = datetime.now(UTC)
    task_id = emulator.scheduler.fire("forecast-refresh", fired_at)
    assert emulator.scheduler.fire("forecast-refresh", fired_at) is None
    refresh = wait_for(lambda: (t := http.get(f"/tasks/{task_id}").json())["status"] == "succeeded" and t,
                       what="the refresh run")
    assert refresh["result"] == {"model_version": model_version, "checked": 2, "requeued": ["forecasts/team/x.csv"]}
    wait_for(lambda: outcomes(emulator, "forecasts/team/x.csv")[-1:] == [("reprocess", "succeeded", None)],
             timeout=60, what="the stale dataset to be reprocessed")
    rewritten = manifest(bucket, "team/x")
    assert rewritten.model_version == model_version and rewritten.written_at > written.written_at
    assert outcomes(emulator, "forecasts/y.csv") == [("upload", "succeeded", None)]


def test_a_runtime_that_is_down_is_retried_with_a_clear_error(start_emulator):
    emulator, http = catalog_emulator(start_emulator, free_port())  # nothing listens there
    (emulator.settings.bucket_path / "forecasts").mkdir(parents=True)
    (emulator.settings.bucket_path / "forecasts" / "z.csv").write_bytes(generated_csv(30, seed=23))
    wait_for(lambda: any(d["name"] == "fn:forecast" for d in http.get("/dead-letters").json()), timeout=60,
             what="the retries to run out")
    letter = next(d for d in http.get("/dead-letters").json() if d["name"] == "fn:forecast")
    assert letter["attempts"] == 3
    assert "did not answer POST /datasets (ConnectError" in letter["last_error"]
    assert "is `dropwire runtime serve` running?" in letter["last_error"]
    assert not (emulator.settings.bucket_path / "forecast-results").exists()
