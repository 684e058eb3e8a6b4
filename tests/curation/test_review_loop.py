"""Batch inference -> human review -> evaluation, end to end with real parts: a `dropwire
runtime serve` process answers a batch on its embedded test model, the completed batch is
exported to a real Label Studio by itself, a reviewer's annotations are made through Label
Studio's own API, the HTTP-triggered pull brings them back as a dataset with truth columns,
and the evaluation workflow evaluates it as it does any model's dataset."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from dropwire.functions.curation.core.reviewed import evaluation_config
from dropwire.functions.curation.handlers import export_id_of
from dropwire.functions.curation.schemas import FreeText
from dropwire.local_emulator.emulator import Emulator
from tests.batches.conftest import TextgenRuntime
from tests.batches.test_batch_runtime import MODEL, chat
from tests.conftest import wait_for
from tests.curation.conftest import LabelStudioServer
from tests.curation.test_export_flow import drop, reach
from tests.platform.conftest import emulator_settings

pytestmark = pytest.mark.slow
CORRECTED = "What the reviewer wrote instead."


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Iterator[TextgenRuntime]:
    process = TextgenRuntime(tmp_path_factory.mktemp("runtime")).start()
    yield process
    process.stop()


def test_a_reviewed_batch_comes_back_as_ground_truth_and_is_evaluated(tmp_path, runtime, label_studio: LabelStudioServer):
    emulator = Emulator(emulator_settings(
        tmp_path / "data", DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
        DROPWIRE_RUNTIME__PORT=str(runtime.port), DROPWIRE_BATCHES__SAVE_EVERY_SECONDS="0.1",
        DROPWIRE_CURATION__LABEL_STUDIO_URL=label_studio.url,
        DROPWIRE_CURATION__LABEL_STUDIO_TOKEN=label_studio.token)).start()
    bucket = emulator.settings.bucket_path
    gateway = httpx.Client(base_url=f"http://127.0.0.1:{emulator.settings.http.port}", timeout=90)
    try:
        # The team's use case and model, set up as for any evaluation; the config is the one
        # the schema's datasets are read with.
        drop(bucket, "use-cases/review/use-case.json", {"name": "Review", "team_email": "team@example.com"})
        reach(emulator, "use_case", "review", "AWAITING_CONFIG")
        drop(bucket, "use-cases/review/config.json", evaluation_config(FreeText(), "review"))
        reach(emulator, "use_case", "review", "CONFIG_VALIDATED")
        drop(bucket, "use-cases/review/models/tiny/register.json", {"name": MODEL, "version": "1"})
        reach(emulator, "model", "review/tiny", "REGISTERED")

        drop(bucket, "batches/answers.json", {"endpoint": "/v1/chat/completions", "metadata": {
            "curation_schema": "free_text", "curation_use_case": "review", "curation_model": "tiny"}})
        drop(bucket, "batches/answers.jsonl", "".join(json.dumps(chat(f"q{i}", f"Tell me about {i} cats.")) + "\n"
                                                    for i in range(4)))
        batch_id = wait_for(lambda: emulator.store.query("SELECT id FROM batches WHERE name = 'answers'"), timeout=60,
                            what="the batch")[0][0]
        reach(emulator, "batch", batch_id, "completed", timeout=180)
        export_id = export_id_of(batch_id, "free_text")
        reach(emulator, "curation_export", export_id, "imported")

        # What Label Studio holds: a task per line, with the model's answer as its prediction.
        project = label_studio.project(export_id)
        tasks = sorted(label_studio.tasks(project["id"]), key=lambda t: t["data"]["custom_id"])
        assert [t["data"]["custom_id"] for t in tasks] == ["q0", "q1", "q2", "q3"]
        for task in tasks:
            [prediction] = task["predictions"]
            assert prediction["model_version"] == MODEL
            assert prediction["result"][0]["value"]["text"] == [task["data"]["model_answer"]]

        # A reviewer accepts two answers as they are and corrects two, through Label Studio's API.
        with label_studio.api() as api:
            for n, task in enumerate(tasks):
                text = task["data"]["model_answer"] if n < 2 else CORRECTED
                created = api.post(f"/api/tasks/{task['id']}/annotations", json={
                    "result": [{"from_name": "answer", "to_name": "text", "type": "textarea", "value": {"text": [text]}}],
                    "was_cancelled": False})
                assert created.status_code == 201, created.text

        pulled = gateway.post("/functions/curation-pull/invoke", params={"wait": 60}, json={"export_id": export_id})
        assert pulled.json()["status"] == "succeeded", pulled.text
        assert pulled.json()["result"]["written"] == [f"curation-datasets/{export_id}/dataset.csv",
                                                     "use-cases/review/models/tiny/dataset.csv"]
        reach(emulator, "model", "review/tiny", "EVALUATION_COMPLETED", timeout=120)
        results = gateway.get("/api/use-cases/review/models/tiny/results").json()
        assert results["records"] == 4
        assert results["records_all_matched"] == 0.5
        [answer] = results["fields"]
        assert answer["field"] == "answer" and answer["accuracy"] == 0.5

        # The same reviews pulled again: nothing is written, nothing evaluated again.
        again = gateway.post("/functions/curation-pull/invoke", params={"wait": 60}, json={"export_id": export_id})
        assert again.json()["result"]["unchanged"] is True
        assert [h.trigger for h in emulator.store.states.history("curation_export", export_id)][-1] == "pull"
        assert emulator.store.query("SELECT count(*) FROM curation_pulls WHERE export_id = ?", [export_id]) == [(1,)]
    finally:
        gateway.close()
        emulator.stop()
