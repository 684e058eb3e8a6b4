"""Text generation's lanes on a real runtime process serving a model directory this test saves
and names in the settings: interactive requests answered ahead of a long background load,
clients that go away (or wait too long) free their rows, identical seeded requests computed
once, and a model that cannot load stopping the start with one clear line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from dropwire.runtime.device import Lane
from dropwire.runtime.errors import RequestTimedOut
from dropwire.runtime.host import RuntimeHost
from dropwire.runtime.model_source import ModelSource
from dropwire.runtime.settings import TextGenSettings, TextModelSettings
from dropwire.runtime.textgen.client import TextGenClient
from dropwire.runtime.textgen.protocol import ChatCompletionRequest, ChatMessage
from tests.conftest import DROPWIRE, REPO, wait_for
from tests.runtime.conftest import (
    LOG_FOR_TESTS,
    RuntimeProcess,
    free_port,
    runtime_env,
    small_settings,
    start_runtime,
    stop_runtime,
)

MODEL = "saved-by-test"
LONG = 3000  # tokens: far longer than anything the test waits for
BATCH = 4


def save_endless_model(path: Path) -> None:
    """A small random Llama with a long context and no end token: it stops only at max_tokens
    (or when its request goes away), so every length here is under the test's control."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["a test model that never ends its sentences " * 20],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>")
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=LONG + 64,
                         pad_token_id=0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def lanes_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    model_dir = tmp_path_factory.mktemp("saved-model")
    save_endless_model(model_dir)
    process = start_runtime(
        tmp_path_factory.mktemp("lanes-data"), textgen=True,
        textgen__models=json.dumps([{"name": MODEL, "path": str(model_dir)},
                                    {"name": "saved-embedder", "path": str(model_dir), "task": "embed"}]),
        textgen__max_batch_sequences=BATCH, textgen__background_decode_steps=2,
    )
    yield process
    stop_runtime(process)


def textgen_stats(runtime: RuntimeProcess) -> dict:
    return runtime.stats()["textgen"]


def test_the_model_directory_named_in_the_settings_is_served(lanes_runtime: RuntimeProcess) -> None:
    client = openai.OpenAI(base_url=f"{lanes_runtime.url}/v1", api_key="unused", max_retries=0)
    assert sorted(model.id for model in client.models.list().data) == [MODEL, "saved-embedder"]
    answer = client.completions.create(model=MODEL, prompt="a test", max_tokens=7)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 7
    assert "building one from the shipped text" not in lanes_runtime.log()  # no embedded model was made


def test_interactive_requests_are_answered_ahead_of_a_long_background_load(lanes_runtime: RuntimeProcess) -> None:
    before = textgen_stats(lanes_runtime)
    units = lanes_runtime.stats()["device"]["units_interactive"]
    background_requests = BATCH + 2
    client = openai.OpenAI(base_url=f"{lanes_runtime.url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def scenario() -> tuple[dict, dict]:
        async with httpx.AsyncClient(base_url=lanes_runtime.url, timeout=120) as http:
            load = [asyncio.create_task(http.post(
                "/v1/completions", headers={"X-Dropwire-Priority": "background"},
                json={"model": MODEL, "prompt": f"load {i}", "max_tokens": LONG})) for i in range(background_requests)]

            def loaded() -> bool:
                stats = textgen_stats(lanes_runtime)
                return stats["active_background"] == BATCH and stats["waiting_background"] == 2

            await asyncio.to_thread(wait_for, loaded, timeout=60, what="the background batch to fill")
            answer = await asyncio.to_thread(
                client.chat.completions.create, model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=16)
            at_answer = textgen_stats(lanes_runtime)
            assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 16
            for task in load:  # the batch consumer goes away: its rows must leave the device
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
        return at_answer, textgen_stats(lanes_runtime)

    at_answer, _ = asyncio.run(scenario())
    # Answered while the whole background load was still on the device or waiting for it.
    assert at_answer["completed_interactive"] == before["completed_interactive"] + 1
    assert at_answer["completed_background"] == before["completed_background"]
    assert at_answer["active_background"] == BATCH and at_answer["waiting_background"] == 2
    assert lanes_runtime.stats()["device"]["units_interactive"] >= units + 16  # its prefill (the first token) and 15 decode steps

    def freed() -> bool:
        stats = textgen_stats(lanes_runtime)
        return (stats["cancelled"] - before["cancelled"] == background_requests
                and stats["active_background"] == 0 and stats["waiting_background"] == 0)

    wait_for(freed, timeout=60, what=f"the abandoned background requests to leave the device ({textgen_stats(lanes_runtime)})")
    assert textgen_stats(lanes_runtime)["completed_background"] == before["completed_background"]


def test_a_streaming_client_that_disconnects_frees_its_row(lanes_runtime: RuntimeProcess) -> None:
    before = textgen_stats(lanes_runtime)
    with httpx.Client(base_url=lanes_runtime.url, timeout=60) as http, http.stream("POST", "/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": LONG, "stream": True,
    }) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith("data: ") and json.loads(first[6:])["object"] == "chat.completion.chunk"
        assert textgen_stats(lanes_runtime)["active_interactive"] == 1
        # Leaving the block closes the connection mid-stream.

    def freed() -> bool:
        stats = textgen_stats(lanes_runtime)
        return stats["cancelled"] == before["cancelled"] + 1 and stats["active_interactive"] == 0

    wait_for(freed, timeout=60, what="the disconnected stream's row to leave the device")
    stats = textgen_stats(lanes_runtime)
    assert stats["completed_interactive"] == before["completed_interactive"]
    assert stats["completion_tokens"] == before["completion_tokens"]  # a cancelled row is not counted as completed


def test_identical_seeded_background_requests_share_one_computation(lanes_runtime: RuntimeProcess) -> None:
    before = textgen_stats(lanes_runtime)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "same"}], "max_tokens": 400, "seed": 3}
    answers: list[tuple[int, dict]] = []
    with TextGenClient(lanes_runtime.url) as client:  # the background lane by default
        threads = [threading.Thread(target=lambda: answers.append(client.post("/v1/chat/completions", body)))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert client.models() == [MODEL, "saved-embedder"]
    assert [status for status, _ in answers] == [200, 200]
    first, second = (body["choices"][0]["message"]["content"] for _, body in answers)
    assert first == second
    after = textgen_stats(lanes_runtime)
    assert after["coalesced"] == before["coalesced"] + 1
    assert after["completed_background"] == before["completed_background"] + 1  # one sequence for both
    status, refused = TextGenClient(lanes_runtime.url).post("/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404 and refused["error"]["code"] == "model_not_found"


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_text_model_that_cannot_load_ends_the_start_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    env = {**runtime_env(tmp_path, free_port(), textgen=True,
                         textgen__models=json.dumps([{"name": "broken", "path": str(empty)}])), "COLUMNS": "1000"}
    process = subprocess.run([*DROPWIRE, "runtime", "serve"], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 1, process.stderr
    assert (f"error: text model 'broken' (generate, transformers) at {empty} cannot be loaded: no config.json there"
            in process.stderr)
    assert "Traceback" not in process.stderr and "Uvicorn running" not in process.stderr


def test_a_request_past_its_timeout_stops_and_frees_its_row(tiny_model: Path, tmp_path: Path) -> None:
    """In-process (the same host the server runs): a generation longer than
    runtime.textgen.request_timeout_s answers 504 and leaves the device."""
    model_dir = tmp_path / "endless"
    save_endless_model(model_dir)
    settings = small_settings(model_path=str(tiny_model), textgen=TextGenSettings(
        models=[TextModelSettings(name=MODEL, path=str(model_dir))], request_timeout_s=0.5))
    source = ModelSource.from_settings(settings, default_path=tmp_path / "unused.pt", tracking_uri="")
    host = RuntimeHost(settings, source, LOG_FOR_TESTS, text_model_dir=tmp_path / "unused")
    host.open()
    assert host.textgen is not None
    body = ChatCompletionRequest(model=MODEL, messages=[ChatMessage(role="user", content="go")], max_tokens=LONG)

    async def never() -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        try:
            with pytest.raises(RequestTimedOut, match=r"did not end within 0.5s \(setting runtime.textgen.request_timeout_s\)"):
                await host.textgen.chat(body, Lane.INTERACTIVE, never)
            stats = await asyncio.to_thread(
                wait_for, lambda: (s := host.textgen.stats()).cancelled == 1 and s.active_interactive == 0 and s,
                timeout=30, what="the timed-out row to leave the device")
            assert stats.completed_interactive == 0
        finally:
            await host.shutdown()

    asyncio.run(scenario())
