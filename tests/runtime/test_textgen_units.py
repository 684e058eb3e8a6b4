"""Text generation's parts on a real (small, saved) model: the continuous batch computes each
sequence as it would alone, whoever joins or leaves; the published text never takes back
what it showed; a vLLM model without vLLM installed fails to load with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.runtime.device import Lane
from dropwire.runtime.errors import ModelLoadError
from dropwire.runtime.settings import TextModelSettings
from dropwire.runtime.textgen.batch import DecodeBatch
from dropwire.runtime.textgen.models import TextModel, load_model
from dropwire.runtime.textgen.sequence import SamplingParams, SequenceJob, decoder_for
from tests.runtime.test_textgen_lanes import save_endless_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    path = tmp_path_factory.mktemp("units-model")
    save_endless_model(path)
    torch.set_num_threads(1)
    return load_model(TextModelSettings(name="units", path=str(path)), torch.device("cpu"), "float32")


def job(model: TextModel, prompt: str, *, max_tokens: int, stop: tuple[str, ...] = (), temperature: float = 0.0,
        seed: int = 0) -> SequenceJob:
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=0.9, stop=stop, seed=seed)
    return SequenceJob(model.name, Lane.BACKGROUND, ids, params, None, model.eos_ids, decoder_for(model.tokenizer))


def run(batch: DecodeBatch, steps: int) -> None:
    for _ in range(steps):
        batch.leave()
        if len(batch):
            batch.step()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_sequence_computes_the_same_whoever_shares_its_batch(model: TextModel, temperature: float) -> None:
    prompts = ["a test", "a test model that never ends", "never"]
    with torch.inference_mode():
        alone = []
        for seed, prompt in enumerate(prompts):
            batch = DecodeBatch(model)
            single = job(model, prompt, max_tokens=24, temperature=temperature, seed=seed)
            batch.join([single])
            run(batch, 30)
            alone.append(single.tokens)
        batch = DecodeBatch(model)
        first, second, third = (job(model, p, max_tokens=24, temperature=temperature, seed=s) for s, p in enumerate(prompts))
        short = job(model, "ends soon", max_tokens=3, temperature=temperature, seed=9)
        batch.join([first, short])
        run(batch, 5)  # the short one leaves meanwhile; its row is freed
        assert len(batch) == 1 and short.finish_reason == "length"
        batch.join([second])  # joins a batch already 6 tokens in (a longer prompt, padded)
        run(batch, 7)
        batch.join([third])
        run(batch, 30)
    assert [first.tokens, second.tokens, third.tokens] == alone
    assert all(len(tokens) == 24 for tokens in alone) and len(batch) == 0


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(min_value=1, max_value=299), min_size=1, max_size=40),
       stops=st.lists(st.text(alphabet="aest ", min_size=1, max_size=3), max_size=3))
def test_published_text_only_grows_and_never_shows_a_stop_sequence(model: TextModel, tokens: list[int], stops: list[str]) -> None:
    sequence = job(model, "a", max_tokens=len(tokens), stop=tuple(stops))
    shown = [""]
    for token in tokens:
        sequence.accept(token)
        shown.append(sequence.snapshot().text)
        if sequence.done:
            break
    final = sequence.snapshot()
    assert final.finish_reason in {"stop", "length"}
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:]))
    assert not any(stop in final.text for stop in stops)
    if final.finish_reason == "length":
        assert final.completion_tokens == len(tokens)
    if not stops:  # the incremental text is the whole decode
        assert final.text == model.tokenizer.decode(tokens, skip_special_tokens=True)


def test_a_vllm_model_without_vllm_stops_the_start_with_one_line(model: TextModel) -> None:
    spec = TextModelSettings(name="big", path=str(model.path), backend="vllm")
    with pytest.raises(ModelLoadError, match=r"backend 'vllm' needs vLLM, the optional extra"):
        load_model(spec, torch.device("cpu"), "float32")


def test_a_directory_that_is_no_model_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError, match=r"text model 'odd' \(generate, transformers\) at .* cannot be loaded: "):
        load_model(TextModelSettings(name="odd", path=str(tmp_path)), torch.device("cpu"), "float32")
