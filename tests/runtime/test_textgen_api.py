"""The /v1 endpoints through the unmodified official `openai` client, against a real
`dropwire runtime serve` process on the embedded test model (built at its first start)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.runtime.conftest import RuntimeProcess, start_runtime, stop_runtime

MODEL = "dropwire-tiny"
EMBEDDER = "dropwire-tiny-embed"
STORY = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def textgen_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    data = tmp_path_factory.mktemp("textgen-data")
    process = start_runtime(data, textgen=True, textgen__max_choices=4)
    yield process
    stop_runtime(process)


@pytest.fixture(scope="module")
def client(textgen_runtime: RuntimeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{textgen_runtime.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(textgen_runtime: RuntimeProcess):
    """The served model's own tokenizer, read from the directory the runtime built."""
    directory = Path(textgen_runtime.log_path.parent) / "models" / "default-textgen"
    return AutoTokenizer.from_pretrained(directory)


def test_the_first_start_builds_the_test_model_and_lists_it(textgen_runtime: RuntimeProcess, client: openai.OpenAI) -> None:
    assert "building one from the shipped text" in textgen_runtime.log()
    assert (textgen_runtime.log_path.parent / "models" / "default-textgen" / "model.safetensors").is_file()
    listed = client.models.list()
    assert sorted(model.id for model in listed.data) == [MODEL, EMBEDDER]
    assert all(model.object == "model" and model.owned_by == "dropwire" for model in listed.data)


def test_chat_completion_counts_tokens_as_the_tokenizer_does(client: openai.OpenAI, tokenizer) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=12, temperature=0)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == MODEL and answer.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.finish_reason in {"stop", "length"}
    rendered = tokenizer.apply_chat_template(STORY, add_generation_prompt=True, tokenize=False)
    assert answer.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert 1 <= answer.usage.completion_tokens <= 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_max_tokens_ends_with_length_and_exact_counts(client: openai.OpenAI, tokenizer) -> None:
    prompt = "The hare laughed at the tortoise"
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0)
    choice = answer.choices[0]
    assert answer.object == "text_completion"
    assert choice.finish_reason == "length"
    assert answer.usage.completion_tokens == 5
    assert answer.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert choice.text


def test_a_seed_gives_the_same_answer_every_time(client: openai.OpenAI) -> None:
    def ask() -> list[str]:
        answer = client.completions.create(model=MODEL, prompt="The fox", max_tokens=24, temperature=1.0, seed=7, n=3)
        return [choice.text for choice in sorted(answer.choices, key=lambda c: c.index)]

    first, second = ask(), ask()
    assert first == second
    assert len(set(first)) > 1  # the three choices are sampled, each with its own seed
    chat = [client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=16, seed=11).choices[0].message.content
            for _ in range(2)]
    assert chat[0] == chat[1]


def test_a_stop_sequence_ends_the_text_before_it(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="The lion", max_tokens=40, temperature=0).choices[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    assert stop.strip(), free
    stopped = client.completions.create(model=MODEL, prompt="The lion", max_tokens=40, temperature=0, stop=[stop, "@@"])
    assert stopped.choices[0].text == free[: free.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_streaming_sends_openai_chunks_that_add_up_to_the_answer(client: openai.OpenAI, textgen_runtime: RuntimeProcess) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=30, seed=5).choices[0]
    chunks = list(client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=30, seed=5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.message.content
    ends = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert ends == [whole.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    # On the wire exactly as OpenAI sends it: data: lines, then data: [DONE].
    raw = httpx.post(f"{textgen_runtime.url}/v1/completions", timeout=60,
                     json={"model": MODEL, "prompt": "The fox", "max_tokens": 4, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events) and events[-1] == "data: [DONE]"
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model=MODEL, prompt="The fox", max_tokens=8, temperature=0, stream=True))
    assert streamed == client.completions.create(model=MODEL, prompt="The fox", max_tokens=8, temperature=0).choices[0].text


def test_embeddings_are_unit_vectors_in_either_encoding(client: openai.OpenAI) -> None:
    # The client asks for base64 unless told otherwise, and decodes it.
    default = client.embeddings.create(model=EMBEDDER, input=["the fox and the crow", "slow and steady", "the fox and the crow"])
    floats = client.embeddings.create(model=EMBEDDER, input=["the fox and the crow"], encoding_format="float")
    vectors = [item.embedding for item in sorted(default.data, key=lambda d: d.index)]
    assert len(vectors) == 3 and len(vectors[0]) == 64
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    assert vectors[0] == pytest.approx(vectors[2]) and vectors[0] != pytest.approx(vectors[1])
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0


def test_bad_requests_get_4xx_with_openais_error_body(client: openai.OpenAI, textgen_runtime: RuntimeProcess) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-9", messages=STORY)
    assert unknown.value.body["code"] == "model_not_found" and "gpt-9" in unknown.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=MODEL, input="x")  # a causal LM is not served for embeddings
    with pytest.raises(openai.BadRequestError) as hot:
        client.chat.completions.create(model=MODEL, messages=STORY, temperature=3)
    assert hot.value.body["param"] == "temperature" and "<= 2.0" in hot.value.body["message"]
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=MODEL, prompt="the fox " * 600)
    assert long.value.body["code"] == "context_length_exceeded" and "maximum context length is 512" in long.value.body["message"]
    with pytest.raises(openai.BadRequestError) as room:
        client.completions.create(model=MODEL, prompt="the fox", max_tokens=600)
    assert room.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as many:
        client.completions.create(model=MODEL, prompt="the fox", n=9)
    assert "runtime.textgen.max_choices" in many.value.body["message"]
    with pytest.raises(openai.BadRequestError) as lane:
        client.completions.create(model=MODEL, prompt="the fox", extra_headers={"X-Dropwire-Priority": "urgent"})
    assert lane.value.body["param"] == "X-Dropwire-Priority"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(model=MODEL, messages=STORY, presence_penalty=1.0)
    assert unsupported.value.body["param"] == "presence_penalty"
    raw = httpx.post(f"{textgen_runtime.url}/v1/chat/completions", json={"model": MODEL}, timeout=30)
    body = raw.json()
    assert raw.status_code == 400 and body["error"]["param"] == "messages" and body["timestamp"]
