"""Text generation's parts on a real (small, saved) model: the continuous batch computes each
sequence as it would alone, whoever joins or leaves; the published text never takes back
what it showed; a vLLM model without vLLM installed fails to load with one clear line."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dropwire.runtime.device import DeviceOwner, Lane
from dropwire.runtime.errors import ModelLoadError
from dropwire.runtime.settings import TextModelSettings
from dropwire.runtime.textgen.batch import DecodeBatch
from dropwire.runtime.textgen.jobs import TextGenJobs
from dropwire.runtime.textgen.lane_gate import LaneGate
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
@example(tokens=[282], stops=["e", " "])  # one token (" ends") holding two stops: the earliest ends the text
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
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
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


def _jobs(model: TextModel, **overrides: int) -> TextGenJobs:
    options = dict(max_batch=16, background_steps=4, background_admit=4, max_embedding_batch=8)
    return TextGenJobs([model], **{**options, **overrides}, wake=lambda: None, log=logging.getLogger("tests.textgen"))


def _drive(work) -> None:
    for _ in work:
        pass


def test_a_request_answered_whole_hears_only_of_its_end_a_stream_of_every_step(model: TextModel) -> None:
    """A busy background batch must not wake the event loop once per token per sequence."""
    jobs = _jobs(model)
    whole, streamed = [], []
    params = SamplingParams(max_tokens=6, temperature=0.0, top_p=1.0, stop=(), seed=0)
    prompt = model.tokenizer("a test", add_special_tokens=False)["input_ids"]
    jobs.submit(model, prompt, params, Lane.BACKGROUND, whole.append, shared=False, every_step=False)
    jobs.submit(model, prompt, params, Lane.BACKGROUND, streamed.append, shared=False)
    with torch.inference_mode():
        while (work := jobs.take(Lane.BACKGROUND)) is not None:
            _drive(work)
    assert [s.completion_tokens for s in whole] == [0, 6] and whole[-1].finish_reason == "length"
    assert [s.completion_tokens for s in streamed] == [0, 1, 2, 3, 4, 5, 6]
    assert whole[-1].text == streamed[-1].text


def test_one_background_prefill_admits_at_most_the_set_number_of_sequences(model: TextModel) -> None:
    """A prefill is a device step an interactive arrival waits for; many newcomers join in turns."""
    jobs = _jobs(model, background_admit=3)
    params = SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, stop=(), seed=0)
    for i in range(8):
        prompt = model.tokenizer(f"a test {i}", add_special_tokens=False)["input_ids"]
        jobs.submit(model, prompt, params, Lane.BACKGROUND, lambda _: None, shared=False)
    joined = []
    with torch.inference_mode():
        for _ in range(3):
            waiting = jobs.stats().waiting_background
            _drive(jobs.take(Lane.BACKGROUND))  # each unit: a prefill, while sequences wait to join
            joined.append(waiting - jobs.stats().waiting_background)
    assert joined == [3, 3, 2]
    assert jobs.stats().active_background == 8


def test_background_work_on_the_event_loop_waits_while_an_interactive_request_is_on_the_device() -> None:
    async def scenario() -> None:
        gate = LaneGate()
        await gate.turn(Lane.BACKGROUND)  # nothing interactive in flight: at once
        with gate.holding(Lane.INTERACTIVE):
            with gate.holding(Lane.INTERACTIVE):
                deferred = asyncio.ensure_future(gate.turn(Lane.BACKGROUND))
                await gate.turn(Lane.INTERACTIVE)  # an interactive request never waits
                for _ in range(10):
                    await asyncio.sleep(0)
                assert not deferred.done()
            for _ in range(10):
                await asyncio.sleep(0)
            assert not deferred.done()  # one interactive request still on the device
        await asyncio.wait_for(deferred, 5)

    asyncio.run(scenario())


def test_background_work_waits_out_the_grace_after_interactive_work(model: TextModel) -> None:
    """runtime.interactive_grace_ms: the next interactive request finds the device free."""
    owner = DeviceOwner([], logging.getLogger("tests.textgen"), interactive_grace_s=3600.0)
    jobs = TextGenJobs([model], max_batch=16, background_steps=4, background_admit=4, max_embedding_batch=8,
                       wake=owner.wake, log=logging.getLogger("tests.textgen"))
    owner.add(jobs)
    params = SamplingParams(max_tokens=3, temperature=0.0, top_p=1.0, stop=(), seed=0)
    prompt = model.tokenizer("a test", add_special_tokens=False)["input_ids"]

    def interactive() -> threading.Event:
        ended = threading.Event()
        jobs.submit(model, prompt, params, Lane.INTERACTIVE, lambda s: s.finish_reason and ended.set(), shared=False)
        return ended

    jobs.submit(model, prompt, params, Lane.BACKGROUND, lambda _: None, shared=False)
    first = interactive()  # queued beside the background one: runs first
    owner.start()
    try:
        assert first.wait(60)
        for _ in range(2):  # each within the grace after the one before
            assert interactive().wait(60)
        stats = jobs.stats()
        assert (stats.completed_interactive, stats.waiting_background, stats.active_background) == (3, 1, 0)
    finally:
        jobs.close(RuntimeError("test over"))
        owner.stop(30)
