"""The schema registry and the label-config check, on any input: what a schema builds from an
answer that fits always passes the check of its own label config; what does not fit, or a
prediction changed to something the config does not allow, is named."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dropwire.functions.curation.core.label_config import LabelConfig
from dropwire.functions.curation.core.label_studio import import_chunks
from dropwire.functions.curation.core.reviewed import dataset_rows
from dropwire.functions.curation.core.tasks import build_tasks
from dropwire.functions.curation.handlers import ELLIPSIS, TITLE_MAX, export_id_of, project_title
from dropwire.functions.curation.schemas import (
    Classification,
    Extraction,
    FreeText,
    LineDoesNotFit,
    Spans,
    UnknownSchema,
    resolve,
)

words = st.text(alphabet=st.characters(categories=("L", "N")), min_size=1, max_size=12)
labels = st.lists(words, min_size=2, max_size=6, unique_by=str.casefold)


def _task(spec, text: str, answer: str) -> dict:
    return {"data": {"text": text}, "predictions": [{"model_version": "m", "score": None,
                                                     "result": spec.prediction(text, answer)}]}


@given(labels, st.data())
def test_a_classification_answer_naming_one_label_fits_its_label_config(names, data):
    spec = Classification(labels=names)
    label = data.draw(st.sampled_from(names))
    # Upper case only where it folds back (not e.g. the dotless ı, whose upper case is I).
    upper = [label.upper()] if label.upper().casefold() == label.casefold() else []
    answer = data.draw(st.sampled_from([label, *upper, f"The answer: {label}.", json.dumps({"label": label})]))
    task = _task(spec, "some text", answer)
    assert LabelConfig.parse(spec.label_config()).problems(task) == []
    assert spec.values(task["predictions"][0]["result"]) == {"label": label}


@given(labels, words)
def test_a_choice_the_config_does_not_list_is_named(names, other):
    spec = Classification(labels=names)
    task = _task(spec, "t", names[0])
    task["predictions"][0]["result"][0]["value"]["choices"] = [other + "x"]
    if other + "x" not in names:
        assert any("is not one of" in p for p in LabelConfig.parse(spec.label_config()).problems(task))


@settings(max_examples=60)
@given(st.lists(st.tuples(words, st.sampled_from(["PER", "LOC"])), min_size=1, max_size=5), st.text(max_size=20))
def test_entities_found_in_the_text_are_spans_of_that_text(entities, filler):
    spec = Spans(labels=["PER", "LOC"])
    text = filler + " ".join(e for e, _ in entities)
    task = _task(spec, text, json.dumps({"entities": [{"text": e, "label": label} for e, label in entities]}))
    config = LabelConfig.parse(spec.label_config())
    assert config.problems(task) == []
    for item in task["predictions"][0]["result"]:
        assert text[item["value"]["start"]:item["value"]["end"]] == item["value"]["text"]
        item["value"]["end"] = len(text) + 1
    assert all("is not inside the text" in p for p in config.problems(task))


@given(st.lists(st.integers(0, 3000), max_size=40), st.integers(1, 7), st.integers(1, 5000))
def test_import_chunks_keep_every_task_in_order_within_the_limits(sizes, max_tasks, max_bytes):
    tasks = [{"data": {"text": "x" * n, "custom_id": str(i)}} for i, n in enumerate(sizes)]
    chunks = list(import_chunks(tasks, max_tasks=max_tasks, max_bytes=max_bytes))
    assert [t for chunk in chunks for t in chunk] == tasks
    for chunk in chunks:
        assert 1 <= len(chunk) <= max_tasks
        assert len(chunk) == 1 or sum(len(json.dumps(t)) + 2 for t in chunk) <= max_bytes


def test_answers_that_do_not_fit_say_why():
    with pytest.raises(LineDoesNotFit, match="none of the labels"):
        Classification(labels=["positive", "negative"]).prediction("t", "a banana")
    with pytest.raises(LineDoesNotFit, match="more than one"):
        Classification(labels=["positive", "negative"]).prediction("t", "positive or negative")
    with pytest.raises(LineDoesNotFit, match="not in the input text"):
        Spans(labels=["PER"]).prediction("Ann met Bob", '[{"text": "Eve", "label": "PER"}]')
    with pytest.raises(LineDoesNotFit, match=r"fields \['colour'\] are not in the schema"):
        Extraction(fields=["total"]).prediction("t", 'Here: {"total": 3, "colour": "red"}')
    with pytest.raises(LineDoesNotFit, match="empty"):
        FreeText().prediction("t", "  ")


def test_the_registry_names_what_it_knows():
    with pytest.raises(UnknownSchema, match=r"unknown schema 'nope'; known: \['free_text', 'sentiment'\]"):
        resolve("nope", {"sentiment": {"kind": "classification", "labels": ["a", "b"]}})
    assert resolve("sentiment", {"sentiment": {"kind": "classification", "labels": ["a", "b"]}})[1] == \
        Classification(labels=["a", "b"])
    with pytest.raises(UnknownSchema, match="is not valid"):
        resolve({"kind": "extraction", "fields": ["not a name"]}, {})


def test_batch_lines_become_tasks_and_reviews_become_truth_columns():
    spec = Extraction(fields=["total", "currency"])
    out = [{"custom_id": "a", "response": {"status_code": 200, "body": {"choices": [
               {"message": {"content": '```json\n{"total": 12.5, "currency": "EUR", "confidence": 0.9}\n```'}}]}}},
           {"custom_id": "b", "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "no"}}]}}},
           {"custom_id": "c", "response": {"status_code": 500, "body": {"error": {}}}}]
    built = build_tasks(spec, batch_id="batch_1", export_id="cx-1", model="m1", texts={"a": "Total 12.5 EUR", "b": "?"},
                        output_lines=out)
    assert [t["data"]["custom_id"] for t in built.tasks] == ["a"]
    assert [(p.custom_id, "holds no JSON" in p.message) for p in built.problems] == [("b", True)]
    assert built.failed_requests == ["c"]
    prediction = built.tasks[0]["predictions"][0]
    assert (prediction["model_version"], prediction["score"]) == ("m1", 0.9)
    review = [{"from_name": "total", "to_name": "text", "type": "textarea", "value": {"text": ["12.50"]}},
              {"from_name": "currency", "to_name": "text", "type": "textarea", "value": {"text": ["EUR"]}}]
    annotated = [{"data": {"custom_id": "a"}, "annotations": [{"id": 1, "result": review, "was_cancelled": False}]}]
    rows, fingerprint = dataset_rows(spec, annotated, {"a": prediction["result"]})
    assert rows == [{"record_id": "a", "total_true": "12.50", "total_pred": "12.5", "currency_true": "EUR",
                     "currency_pred": "EUR"}]
    assert dataset_rows(spec, annotated, {"a": prediction["result"]})[1] == fingerprint



@given(prefix=st.text(max_size=60), name=st.text(min_size=1, max_size=300), schema=st.text(min_size=1, max_size=80),
       batch=st.text(min_size=1, max_size=40))
@example(prefix="dropwire", name="support-tickets", schema="support_topics", batch="batch_1")
@example(prefix="dropwire", name="batch_9b67bbb8a4764de296ec1092", schema="topic", batch="batch_9b67bbb8a4764de296ec1092")
def test_a_project_title_fits_label_studios_limit_and_keeps_the_export_id(prefix, name, schema, batch):
    export_id = export_id_of(batch, schema)
    title = project_title(prefix, name, schema, export_id)
    full = f"{prefix} {name} ({schema}) [{export_id}]"
    assert len(title) <= TITLE_MAX and title.endswith(f" [{export_id}]"), title
    if len(full) <= TITLE_MAX:
        assert title == full  # a title that fitted before is the same, so its project is found again
    else:
        assert len(title) == TITLE_MAX, "cut no more than it must"


def _kept(part: str, whole: str) -> bool:
    return part == whole or (part.endswith(ELLIPSIS) and whole.startswith(part[:-1]))


@given(prefix=st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True), name=st.text(min_size=1, max_size=300),
       schema=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,60}", fullmatch=True))
@example(prefix="dropwire", name="support-tickets", schema="support_topics")
def test_a_shortened_title_keeps_the_beginning_of_each_part(prefix, name, schema):
    export_id = export_id_of("batch_1", schema)
    title = project_title(prefix, name, schema, export_id)
    readable = title[:-len(f" [{export_id}]")]
    head, _, rest = readable.partition(" ")
    middle, _, tail = rest.rpartition(" (")
    assert _kept(head, prefix) and _kept(middle, name) and tail.endswith(")") and _kept(tail[:-1], schema), title
