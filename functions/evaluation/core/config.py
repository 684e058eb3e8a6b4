"""A use case's evaluation config: what each field is, how a prediction is judged against the
truth, and the dataset-level rules. Loaded from YAML or JSON; validation lists every problem."""

from __future__ import annotations

import hashlib
import json
import re
import types
from typing import IO, Literal, TypeGuard, Union, cast, get_args, get_origin

import fsspec
import msgspec
import yaml

from dropwire.functions.evaluation.core.errors import ConfigInvalid

FieldType = Literal["string", "integer", "number", "date", "category", "boolean"]
Delimiter = Literal["auto", ",", ";", "\t", "|"]

# Names the per-record results use for their own columns, so no field may take them.
RESERVED_NAMES = ("record_id", "all_matched")


class _Rule(msgspec.Struct, tag_field="kind", frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Exact(_Rule, tag="exact", frozen=True):
    """The same value of the field's type: the same text (surrounding whitespace ignored) for
    string and category, the same number, the same date, the same boolean."""


class NormalizedText(_Rule, tag="normalized_text", frozen=True):
    """Text compared after the chosen normalisations."""

    case: bool = True
    whitespace: bool = True
    punctuation: bool = True


class Numeric(_Rule, tag="numeric", frozen=True):
    """|truth - prediction| <= max(abs_tolerance, rel_tolerance * |truth|), in decimal on the numbers
    as written (99.50 vs 99.51 is within 0.01)."""

    abs_tolerance: float = 0.0
    rel_tolerance: float = 0.0


class DateMatch(_Rule, tag="date", frozen=True):
    """The same calendar date, written in any common format, give or take tolerance_days."""

    tolerance_days: int = 0


class CategoryMatch(_Rule, tag="category", frozen=True):
    """One of the allowed values, compared without case or extra whitespace."""


MatchRule = Exact | NormalizedText | Numeric | DateMatch | CategoryMatch

# Which rules make sense for which field types.
RULE_TYPES: dict[str, tuple[str, ...]] = {
    "exact": ("string", "integer", "number", "date", "category", "boolean"),
    "normalized_text": ("string", "category"),
    "numeric": ("integer", "number"),
    "date": ("date",),
    "category": ("category",),
}


class FieldSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    type: FieldType = "string"
    # A required field must have a truth value on every record.
    required: bool = False
    match: MatchRule = msgspec.field(default_factory=Exact)
    # Allowed values of a category field.
    categories: list[str] = []
    # Inclusive bounds for integer and number fields.
    min: float | None = None
    max: float | None = None
    # How dates are written in the files: 03/04/2024 is 3 April when true, 4 March when false.
    dayfirst: bool = False
    # Column names when they do not follow the naming convention.
    truth_column: str | None = None
    prediction_column: str | None = None


class ColumnNaming(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """For layout: single, field ``x`` is read from ``x`` + truth_suffix and ``x`` + prediction_suffix."""

    truth_suffix: str = "_true"
    prediction_suffix: str = "_pred"


class DatasetRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    min_rows: int = 1
    # Largest share (0..1) of missing truth values a column may have; 1.0 allows any.
    max_missing_share: float = 1.0
    # Cell values that mean "no value" (compared without case), besides an empty cell.
    missing_values: list[str] = msgspec.field(default_factory=lambda: ["NA", "N/A", "null", "None", "NaN"])
    delimiter: Delimiter = "auto"
    # Excel sheet to read; the first sheet when not set.
    sheet: str | None = None


class EvaluationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    use_case: str
    fields: list[FieldSpec]
    # single: one file with truth and prediction columns; separate: a truth file and a
    # predictions file joined on record_id.
    layout: Literal["single", "separate"] = "single"
    # Column naming each record; with layout single it may be null (the row number is used).
    record_id: str | None = "record_id"
    columns: ColumnNaming = msgspec.field(default_factory=ColumnNaming)
    dataset: DatasetRules = msgspec.field(default_factory=DatasetRules)

    def truth_column(self, field: FieldSpec) -> str:
        if field.truth_column:
            return field.truth_column
        return field.name + self.columns.truth_suffix if self.layout == "single" else field.name

    def prediction_column(self, field: FieldSpec) -> str:
        if field.prediction_column:
            return field.prediction_column
        return field.name + self.columns.prediction_suffix if self.layout == "single" else field.name


class ConfigProblem(msgspec.Struct, frozen=True):
    """One thing wrong with a config: ``path`` names the place (``fields[2].match.abs_tolerance``)."""

    path: str
    message: str


def load_config(data: bytes | str, source: str = "config") -> EvaluationConfig:
    """Parse YAML or JSON and validate; raise ConfigInvalid listing every problem."""
    raw = _parse(data, source)
    problems: list[ConfigProblem] = []
    _check_value(raw, EvaluationConfig, "", problems)
    _check_semantics(raw, problems)
    if problems:
        problems.sort(key=_problem_order)
        raise ConfigInvalid(source, problems)
    return msgspec.convert(raw, EvaluationConfig)


def read_config(url: str) -> EvaluationConfig:
    """Load a config file from a local path, ``file://`` or ``s3://`` URL."""
    with fsspec.open(url, "rb") as f:
        # fsspec.open is unannotated; pyright infers a list from OpenFiles' branch.
        return load_config(cast(IO[bytes], f).read(), source=url)


def config_hash(config: EvaluationConfig) -> str:
    """SHA-256 of the canonical JSON (keys sorted, defaults filled): equal configs hash equal
    however they were written."""
    canonical = msgspec.json.encode(msgspec.to_builtins(config), order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def _problem_order(problem: ConfigProblem) -> int:
    # Top-level options first, then field by field, as a person reads the file.
    match = re.match(r"fields\[(\d+)\]", problem.path)
    return int(match.group(1)) + 1 if match else 0


def _parse(data: bytes | str, source: str) -> object:
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    if not text.strip():
        raise ConfigInvalid(source, [ConfigProblem("(file)", "the config is empty; expected YAML or JSON")])
    try:
        if source.lower().endswith(".json") or text.lstrip().startswith("{"):
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ConfigInvalid(source, [ConfigProblem("(file)", f"not valid JSON at {where}: {exc.msg}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigInvalid(source, [ConfigProblem("(file)", f"not valid YAML{where}: {reason}")]) from None


# --- structural checks: walk the raw value against the Struct types, collecting every problem


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_struct(tp: object) -> TypeGuard[type[msgspec.Struct]]:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _tagged_members(tp: object) -> list[type]:
    if get_origin(tp) in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if members and all(_is_struct(m) and m.__struct_config__.tag for m in members):
            return members
    return []


def _describe(tp: object) -> str:
    if tp is str:
        return "text"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])} values"
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(_describe(m) for m in members) + (" or null" if len(members) < len(get_args(tp)) else "")
    if _is_struct(tp):
        return "a mapping"
    return str(tp)


def _check_value(value: object, tp: object, path: str, problems: list[ConfigProblem]) -> None:
    members = _tagged_members(tp)
    if members:
        _check_tagged(value, members, path, problems)
    elif _is_struct(tp):
        _check_struct(value, tp, path, problems)
    elif get_origin(tp) is list and _is_struct(get_args(tp)[0]):
        if not isinstance(value, list):
            problems.append(ConfigProblem(path, f"expected a list, got {value!r}"))
            return
        for i, item in enumerate(value):
            _check_value(item, get_args(tp)[0], f"{path}[{i}]", problems)
    else:
        try:
            msgspec.convert(value, tp)
        except msgspec.ValidationError:
            problems.append(ConfigProblem(path, f"expected {_describe(tp)}, got {value!r}"))


def _check_struct(value: object, cls: type, path: str, problems: list[ConfigProblem], skip: str = "") -> None:
    where = path or "(top level)"
    if not isinstance(value, dict):
        problems.append(ConfigProblem(where, f"expected a mapping, got {value!r}"))
        return
    known = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    for key in value:
        if key != skip and key not in known:
            problems.append(ConfigProblem(_join(path, str(key)), f"unknown option; expected one of {', '.join(known)}"))
    for name, info in known.items():
        if name in value:
            _check_value(value[name], info.type, _join(path, name), problems)
        elif info.required:
            problems.append(ConfigProblem(_join(path, name), f"missing; expected {_describe(info.type)}"))


def _check_tagged(value: object, members: list[type], path: str, problems: list[ConfigProblem]) -> None:
    tag_field = members[0].__struct_config__.tag_field
    by_tag = {m.__struct_config__.tag: m for m in members}
    expected = "one of " + ", ".join(by_tag)
    if not isinstance(value, dict):
        problems.append(ConfigProblem(path, f"expected a mapping with '{tag_field}' ({expected}), got {value!r}"))
        return
    tag = value.get(tag_field)
    if tag not in by_tag:
        got = "missing" if tag is None else f"got {tag!r}"
        problems.append(ConfigProblem(_join(path, tag_field), f"expected {expected}; {got}"))
        return
    _check_struct(value, by_tag[tag], path, problems, skip=tag_field)


# --- semantic checks: rules between values, run once the shapes are right


def _check_semantics(raw: object, problems: list[ConfigProblem]) -> None:
    """Checks between values. They run on every part whose shape is right, so a config with a
    mistyped option in one field still hears about a bad tolerance in another."""

    def add(path: str, message: str) -> None:
        problems.append(ConfigProblem(path, message))

    if not isinstance(raw, dict):
        return
    fields: list[tuple[int, FieldSpec]] = []
    raw_fields = raw.get("fields")
    for i, item in enumerate(raw_fields if isinstance(raw_fields, list) else []):
        try:
            fields.append((i, msgspec.convert(item, FieldSpec)))
        except msgspec.ValidationError:
            continue  # its shape problems are already listed
    for i, field in fields:
        _check_field(field, f"fields[{i}]", add)
    # The top-level options that are in shape, the others left at their defaults (their
    # problems are listed already); a missing use_case is listed already too.
    usable: dict[str, object] = {"use_case": "(missing)"}
    for info in msgspec.structs.fields(EvaluationConfig):
        if info.encode_name in raw and info.encode_name != "fields":
            try:
                msgspec.convert(raw[info.encode_name], info.type)
            except msgspec.ValidationError:
                continue
            usable[info.encode_name] = raw[info.encode_name]
    config = msgspec.convert({**usable, "fields": [msgspec.to_builtins(f) for _, f in fields]}, EvaluationConfig)

    if not config.use_case.strip():
        add("use_case", "must not be empty; expected the use case name")
    if not raw.get("fields"):
        add("fields", "no fields; expected at least one field to evaluate")
    if config.layout == "separate" and not config.record_id:
        add("record_id", "layout 'separate' joins the two files on a record id; expected a column name")
    if config.layout == "single" and config.columns.truth_suffix == config.columns.prediction_suffix:
        add("columns", "truth_suffix and prediction_suffix are equal; expected two different suffixes")
    rules = config.dataset
    if rules.min_rows < 0:
        add("dataset.min_rows", f"expected a whole number >= 0, got {rules.min_rows}")
    if not 0.0 <= rules.max_missing_share <= 1.0:
        add("dataset.max_missing_share", f"expected a share between 0 and 1, got {rules.max_missing_share}")

    first_named: dict[str, int] = {}
    # Column -> who reads it, to catch two fields (or a field and the id) sharing a column.
    truth_owner: dict[str, str] = {config.record_id: "record_id"} if config.record_id else {}
    pred_owner = dict(truth_owner)
    for i, field in fields:
        path = f"fields[{i}]"
        if field.name in first_named:
            add(f"{path}.name", f"'{field.name}' is already the name of fields[{first_named[field.name]}]; expected unique names")
            continue
        first_named[field.name] = i
        taken = {}
        for owner, column in ((truth_owner, config.truth_column(field)), (pred_owner, config.prediction_column(field))):
            if column in owner:
                taken.setdefault(column, owner[column])
            owner.setdefault(column, path)
        for column, other in taken.items():
            add(path, f"column '{column}' is already read for {other}; expected each field to have its own columns")


def _check_field(field: FieldSpec, path: str, add) -> None:
    if not field.name.strip():
        add(f"{path}.name", "must not be empty")
    if field.name in RESERVED_NAMES:
        add(f"{path}.name", f"'{field.name}' is reserved for the results; expected another name")
    kind = cast(str, field.match.__struct_config__.tag)  # every rule is tagged with a string (tag="...")
    if field.type not in RULE_TYPES[kind]:
        allowed = ", ".join(RULE_TYPES[kind])
        add(f"{path}.match.kind", f"rule '{kind}' does not apply to a {field.type} field; expected a field of type {allowed}")
    if isinstance(field.match, Numeric):
        for name in ("abs_tolerance", "rel_tolerance"):
            if getattr(field.match, name) < 0:
                add(f"{path}.match.{name}", f"expected a tolerance >= 0, got {getattr(field.match, name)}")
    if isinstance(field.match, DateMatch) and field.match.tolerance_days < 0:
        add(f"{path}.match.tolerance_days", f"expected a number of days >= 0, got {field.match.tolerance_days}")
    if field.type == "category":
        if not field.categories:
            add(f"{path}.categories", "a category field needs its allowed values; expected a non-empty list")
        normalised = [" ".join(c.split()).lower() for c in field.categories]
        if len(set(normalised)) < len(normalised):
            add(f"{path}.categories", "values repeat when compared without case or spacing; expected distinct values")
    elif field.categories:
        add(f"{path}.categories", f"only category fields have categories; this field is {field.type}")
    if field.type not in ("integer", "number"):
        for name in ("min", "max"):
            if getattr(field, name) is not None:
                add(f"{path}.{name}", f"bounds apply to integer and number fields; this field is {field.type}")
    elif field.min is not None and field.max is not None and field.min > field.max:
        add(f"{path}.min", f"min {field.min} is greater than max {field.max}; expected min <= max")
    if field.dayfirst and field.type != "date":
        add(f"{path}.dayfirst", f"applies to date fields; this field is {field.type}")
