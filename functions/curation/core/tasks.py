"""A completed batch's lines as Label Studio tasks: the input file gives each line's text (its
prompt), the output file the model's answer, the schema turns the answer into a prediction
(model_version, score, result items), and the label config checks every task before it can be
sent. Lines whose answer does not fit the schema are problems named by their custom_id."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from dropwire.functions.curation.core.label_config import LabelConfig
from dropwire.functions.curation.schemas import SCORE_KEYS, TEXT, LineDoesNotFit, SchemaSpec, json_in


@dataclass(frozen=True)
class LineProblem:
    custom_id: str
    message: str


@dataclass
class BuiltTasks:
    tasks: list[dict[str, Any]] = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)
    #: custom_ids whose request failed in the batch (no answer to review)
    failed_requests: list[str] = field(default_factory=list)


def _lines(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    for raw in stream:
        if raw.strip():
            yield json.loads(raw)


def prompt_texts(input_stream: IO[bytes]) -> dict[str, str]:
    """custom_id -> the text a reviewer reads: the messages' contents (chat), or the prompt."""
    texts = {}
    for line in _lines(input_stream):
        body = line.get("body") or {}
        if "messages" in body:
            text = "\n".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
        else:
            prompt = body.get("prompt", body.get("input", ""))
            text = "\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
        texts[str(line.get("custom_id"))] = text
    return texts


def answer_of(body: Any) -> str | None:
    """The model's text in an OpenAI chat or completion response body."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else None


def _score(answer: str) -> float | None:
    """A confidence the model stated itself ({"confidence": 0.8} or "score"); None when it gave none."""
    try:
        parsed = json_in(answer)
    except LineDoesNotFit:
        return None
    if isinstance(parsed, dict):
        for key in SCORE_KEYS:
            value = parsed.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
                return float(value)
    return None


def build_tasks(spec: SchemaSpec, *, batch_id: str, export_id: str, model: str, texts: dict[str, str],
                output_lines: Iterable[dict[str, Any]]) -> BuiltTasks:
    config = LabelConfig.parse(spec.label_config())
    built = BuiltTasks()
    for line in output_lines:
        custom_id = str(line.get("custom_id"))
        response = line.get("response") or {}
        answer = answer_of(response.get("body")) if 200 <= int(response.get("status_code") or 0) < 300 else None
        if answer is None:
            built.failed_requests.append(custom_id)
            continue
        text = texts.get(custom_id)
        if text is None:
            built.problems.append(LineProblem(custom_id, "the batch's input file has no line with this custom_id"))
            continue
        try:
            result = spec.prediction(text, answer)
        except LineDoesNotFit as exc:
            built.problems.append(LineProblem(custom_id, str(exc)))
            continue
        task = {"data": {TEXT: text, "custom_id": custom_id, "batch_id": batch_id, "export_id": export_id,
                         "model_answer": answer},
                "predictions": [{"model_version": model, "score": _score(answer), "result": result}]}
        problems = config.problems(task)
        if problems:
            built.problems.append(LineProblem(custom_id, "; ".join(problems)))
            continue
        built.tasks.append(task)
    return built
