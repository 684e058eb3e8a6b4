"""The registry of task schemas (the seed's "conquest schemas"): for each kind of review task,
the Label Studio label config its project uses, how a model's answer becomes a prediction's
result items, and how result items (a prediction's or a reviewer's) read back as field values
for the evaluation workflow.

Kinds: `classification` (one of `labels`), `ner` (labelled spans of the input text),
`extraction` (named `fields`, one text box each), `free_text` (one text box). A schema is named
in the registry (the built-ins below plus `curation.schemas` in the settings) or given inline
in an export request as `{"kind": ..., ...}`."""

from __future__ import annotations

import json
import re
from typing import Any
from xml.sax.saxutils import quoteattr

import msgspec

from dropwire.functions.kit.errors import DropwireError

TEXT = "text"  # the object tag every schema's text is shown in, and the task data key it reads
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Keys of an answer's JSON that carry the model's own confidence (the prediction's score), not content.
SCORE_KEYS = ("confidence", "score")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class UnknownSchema(DropwireError):
    code = "unknown_schema"


class LineDoesNotFit(ValueError):
    """A model's answer that this schema cannot turn into a prediction (the reason is the message)."""


def _result(from_name: str, kind: str, value: dict[str, Any], item_id: str | None = None) -> dict[str, Any]:
    item = {"from_name": from_name, "to_name": TEXT, "type": kind, "value": value}
    if item_id is not None:
        item["id"] = item_id
    return item


def _items(result: list[dict[str, Any]], from_name: str, kind: str) -> list[dict[str, Any]]:
    return [item for item in result if item.get("from_name") == from_name and item.get("type") == kind]


def json_in(answer: str) -> Any:
    """The JSON an answer carries: the whole answer, a fenced block, or its outermost {...} / [...]."""
    fenced = _FENCE.search(answer)
    candidates = [answer.strip()] + ([fenced.group(1).strip()] if fenced else [])
    for opening, closing in ("{}", "[]"):
        start, end = answer.find(opening), answer.rfind(closing)
        if 0 <= start < end:
            candidates.append(answer[start:end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    raise LineDoesNotFit(f"the answer holds no JSON: {answer[:80]!r}")


def _text_area(name: str, header: str | None = None) -> str:
    head = f"<Header value={quoteattr(header)}/>" if header else ""
    return f'{head}<TextArea name="{name}" toName="{TEXT}" maxSubmissions="1" editable="true"/>'


def _text_value(result: list[dict[str, Any]], name: str) -> str:
    found = _items(result, name, "textarea")
    return "\n".join(str(t) for item in found for t in item["value"].get("text", [])) if found else ""


class Classification(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="classification",
                     forbid_unknown_fields=True):
    labels: list[str]
    FIELD = "label"

    def __post_init__(self) -> None:
        if len(set(self.labels)) < 2:
            raise ValueError("a classification schema needs at least two distinct labels")

    def label_config(self) -> str:
        choices = "".join(f"<Choice value={quoteattr(label)}/>" for label in self.labels)
        return (f'<View><Text name="{TEXT}" value="${TEXT}"/>'
                f'<Choices name="{self.FIELD}" toName="{TEXT}" choice="single" showInline="true">{choices}</Choices></View>')

    def prediction(self, text: str, answer: str) -> list[dict[str, Any]]:
        """The one label the answer names: the answer itself, a JSON {"label": ...}, or the only
        label occurring in it as a word (case ignored)."""
        try:
            parsed = json_in(answer)
            named = str(parsed.get("label", "")) if isinstance(parsed, dict) else ""
        except LineDoesNotFit:
            named = ""
        by_case = {label.casefold(): label for label in self.labels}
        label = by_case.get(named.strip().casefold()) or by_case.get(answer.strip().casefold())
        if label is None:
            found = {label for label in self.labels
                     if re.search(rf"(?<!\w){re.escape(label.casefold())}(?!\w)", answer.casefold())}
            if len(found) != 1:
                raise LineDoesNotFit(f"the answer names {'none' if not found else 'more than one'} of the labels "
                                     f"{self.labels}: {answer[:80]!r}")
            label = found.pop()
        return [_result(self.FIELD, "choices", {"choices": [label]})]

    def values(self, result: list[dict[str, Any]]) -> dict[str, str]:
        chosen = [c for item in _items(result, self.FIELD, "choices") for c in item["value"].get("choices", [])]
        return {self.FIELD: chosen[0] if chosen else ""}

    def evaluation_fields(self) -> list[dict[str, Any]]:
        return [{"name": self.FIELD, "type": "category", "categories": list(self.labels), "match": {"kind": "category"}}]


class Spans(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="ner", forbid_unknown_fields=True):
    labels: list[str]
    FIELD = "entities"

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("an ner schema needs at least one label")

    def label_config(self) -> str:
        labels = "".join(f"<Label value={quoteattr(label)}/>" for label in self.labels)
        return f'<View><Labels name="label" toName="{TEXT}">{labels}</Labels><Text name="{TEXT}" value="${TEXT}"/></View>'

    def prediction(self, text: str, answer: str) -> list[dict[str, Any]]:
        """Entities as JSON, a list or {"entities": [...]}, each {"text", "label"} (optionally
        "start"/"end"); each is found in the input text (the next occurrence of its text)."""
        parsed = json_in(answer)
        entities = parsed.get("entities") if isinstance(parsed, dict) else parsed
        if not isinstance(entities, list):
            raise LineDoesNotFit('expected a JSON list of entities, or {"entities": [...]}')
        items, taken = [], set()
        for n, entity in enumerate(entities):
            if not isinstance(entity, dict) or not isinstance(entity.get("text"), str) or not entity["text"]:
                raise LineDoesNotFit(f"entity {n} is not an object with a non-empty \"text\"")
            if entity.get("label") not in self.labels:
                raise LineDoesNotFit(f"entity {n} has label {entity.get('label')!r}, not one of {self.labels}")
            start = entity.get("start")
            if not isinstance(start, int) or text[start:start + len(entity["text"])] != entity["text"]:
                start = text.find(entity["text"])
                while start >= 0 and start in taken:
                    start = text.find(entity["text"], start + 1)
            if start < 0:
                raise LineDoesNotFit(f"entity {n} ({entity['text'][:40]!r}) is not in the input text")
            taken.add(start)
            end = start + len(entity["text"])
            items.append(_result("label", "labels", {"start": start, "end": end, "text": text[start:end],
                                                     "labels": [entity["label"]]}, item_id=f"e{n}"))
        return items

    def values(self, result: list[dict[str, Any]]) -> dict[str, str]:
        spans = sorted({(item["value"]["start"], item["value"]["end"], label)
                        for item in _items(result, "label", "labels") for label in item["value"].get("labels", [])})
        return {self.FIELD: "|".join(f"{s}-{e}:{label}" for s, e, label in spans)}

    def evaluation_fields(self) -> list[dict[str, Any]]:
        return [{"name": self.FIELD, "type": "string", "match": {"kind": "exact"}}]


class Extraction(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="extraction",
                 forbid_unknown_fields=True):
    fields: list[str]

    def __post_init__(self) -> None:
        bad = [f for f in self.fields if not _NAME.match(f) or f == TEXT]
        if not self.fields or bad or len(set(self.fields)) != len(self.fields):
            raise ValueError(f"an extraction schema needs distinct field names like invoice_number (not {TEXT!r}); "
                             f"got {self.fields}")

    def label_config(self) -> str:
        return f'<View><Text name="{TEXT}" value="${TEXT}"/>' + "".join(_text_area(f, f) for f in self.fields) + "</View>"

    def prediction(self, text: str, answer: str) -> list[dict[str, Any]]:
        """A JSON object of the schema's fields (strings, numbers, booleans or null)."""
        parsed = json_in(answer)
        if not isinstance(parsed, dict):
            raise LineDoesNotFit(f"expected a JSON object with fields {self.fields}")
        unknown = sorted(set(parsed) - set(self.fields) - set(SCORE_KEYS))
        if unknown:
            raise LineDoesNotFit(f"fields {unknown} are not in the schema {self.fields}")
        items = []
        for name in self.fields:
            value = parsed.get(name)
            if isinstance(value, (dict, list)):
                raise LineDoesNotFit(f"field {name!r} is {type(value).__name__}, expected a single value")
            if value is not None and str(value) != "":
                items.append(_result(name, "textarea", {"text": [str(value)]}))
        return items

    def values(self, result: list[dict[str, Any]]) -> dict[str, str]:
        return {name: _text_value(result, name) for name in self.fields}

    def evaluation_fields(self) -> list[dict[str, Any]]:
        return [{"name": f, "type": "string",
                 "match": {"kind": "normalized_text", "case": True, "whitespace": True, "punctuation": False}}
                for f in self.fields]


class FreeText(msgspec.Struct, kw_only=True, frozen=True, tag_field="kind", tag="free_text", forbid_unknown_fields=True):
    FIELD = "answer"

    def label_config(self) -> str:
        return f'<View><Text name="{TEXT}" value="${TEXT}"/>{_text_area(self.FIELD, "Answer")}</View>'

    def prediction(self, text: str, answer: str) -> list[dict[str, Any]]:
        if not answer.strip():
            raise LineDoesNotFit("the answer is empty")
        return [_result(self.FIELD, "textarea", {"text": [answer]})]

    def values(self, result: list[dict[str, Any]]) -> dict[str, str]:
        return {self.FIELD: _text_value(result, self.FIELD)}

    def evaluation_fields(self) -> list[dict[str, Any]]:
        return [{"name": self.FIELD, "type": "string",
                 "match": {"kind": "normalized_text", "case": True, "whitespace": True, "punctuation": True}}]


SchemaSpec = Classification | Spans | Extraction | FreeText
BUILTIN: dict[str, SchemaSpec] = {"free_text": FreeText()}


def registry(configured: dict[str, Any]) -> dict[str, SchemaSpec]:
    """The built-ins and the schemas named in settings (`curation.schemas`)."""
    named = dict(BUILTIN)
    for name, definition in configured.items():
        try:
            named[name] = msgspec.convert(definition, SchemaSpec)
        except (msgspec.ValidationError, ValueError) as exc:
            raise UnknownSchema(f"curation.schemas.{name}: {exc}") from None
    return named


def resolve(schema: str | dict[str, Any], configured: dict[str, Any]) -> tuple[str, SchemaSpec]:
    """(name, spec) of a schema named in the registry, or given inline as {"kind": ...}."""
    if isinstance(schema, str):
        known = registry(configured)
        if schema not in known:
            raise UnknownSchema(f"unknown schema {schema!r}; known: {sorted(known)} (add one under curation.schemas, "
                                "or give it inline as {\"kind\": \"classification\" | \"ner\" | \"extraction\" | "
                                "\"free_text\", ...})")
        return schema, known[schema]
    try:
        spec = msgspec.convert(schema, SchemaSpec)
    except (msgspec.ValidationError, ValueError) as exc:
        raise UnknownSchema(f"schema {json.dumps(schema)[:200]} is not valid: {exc}") from None
    return f"inline-{spec.__struct_config__.tag}", spec
