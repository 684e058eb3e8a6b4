from __future__ import annotations

import json

import pytest
import yaml

from dropwire.functions.evaluation.core import (
    ConfigInvalid,
    DateMatch,
    NormalizedText,
    Numeric,
    config_hash,
    load_config,
    read_config,
    render_template,
)


def problems_of(text: str, source: str = "c.yaml") -> dict[str, str]:
    with pytest.raises(ConfigInvalid) as caught:
        load_config(text, source)
    return {p.path: p.message for p in caught.value.problems}


def test_yaml_and_json_load_to_the_same_config_and_hash(config_dict):
    from_json = load_config(json.dumps(config_dict), "c.json")
    from_yaml = load_config(yaml.safe_dump(config_dict).encode(), "c.yaml")
    assert from_json == from_yaml
    assert config_hash(from_json) == config_hash(from_yaml)
    total = from_yaml.fields[1]
    assert isinstance(total.match, Numeric) and total.match.abs_tolerance == 0.01
    assert from_yaml.truth_column(total) == "total_true" and from_yaml.prediction_column(total) == "total_pred"


def test_hash_ignores_key_order_and_spelled_out_defaults_but_not_rules(config_dict):
    base = config_hash(load_config(json.dumps(config_dict)))
    reordered = dict(reversed(list(config_dict.items())))
    assert config_hash(load_config(json.dumps(reordered))) == base
    assert config_hash(load_config(json.dumps({**config_dict, "layout": "single"}))) == base
    config_dict["fields"][1]["match"]["abs_tolerance"] = 0.02
    changed = config_hash(load_config(json.dumps(config_dict)))
    assert changed != base and len(changed) == 64


def test_template_parses_validates_and_documents_every_option():
    text = render_template('Invoices "EU": v2')
    config = load_config(text, "template.yaml")
    assert config.use_case == 'Invoices "EU": v2'
    assert {f.type for f in config.fields} == {"string", "integer", "number", "date", "category", "boolean"}
    assert {f.match.__struct_config__.tag for f in config.fields} == {"exact", "normalized_text", "numeric", "date", "category"}
    for option in ("layout", "record_id", "truth_suffix", "prediction_suffix", "min_rows", "max_missing_share",
                   "missing_values", "delimiter", "sheet", "required", "categories", "min, max", "dayfirst",
                   "truth_column", "prediction_column", "abs_tolerance", "rel_tolerance", "tolerance_days",
                   "case:", "whitespace:", "punctuation:"):  # fmt: skip
        assert option in text, option


def test_invalid_config_lists_every_problem_with_its_path():
    problems = problems_of("""
use_case: invoices
layout: separate
record_id: null
colour: red
dataset: {max_missing_share: 2}
fields:
  - {name: a, type: integr}
  - {name: b, type: number, match: {kind: numeric, abs_tolerance: -1}}
  - {name: c, type: string, match: {kind: date}}
  - {type: category, categories: [EUR]}
  - {name: d, type: date, match: {kind: fuzzy}}
  - {name: e, type: number, min: 5, max: 1, match: {kind: numeric, rel_tolerance: abc}}
  - {name: f, type: category}
  - {name: b, type: string}
""")
    assert problems == {
        "colour": "unknown option; expected one of use_case, fields, layout, record_id, columns, dataset",
        "record_id": "layout 'separate' joins the two files on a record id; expected a column name",
        "dataset.max_missing_share": "expected a share between 0 and 1, got 2.0",
        "fields[0].type": "expected one of 'string', 'integer', 'number', 'date', 'category', 'boolean', got 'integr'",
        "fields[1].match.abs_tolerance": "expected a tolerance >= 0, got -1.0",
        "fields[2].match.kind": "rule 'date' does not apply to a string field; expected a field of type date",
        "fields[3].name": "missing; expected text",
        "fields[4].match.kind": "expected one of exact, normalized_text, numeric, date, category; got 'fuzzy'",
        "fields[5].match.rel_tolerance": "expected a number, got 'abc'",
        "fields[6].categories": "a category field needs its allowed values; expected a non-empty list",
        "fields[7].name": "'b' is already the name of fields[1]; expected unique names",
    }


def test_config_error_message_counts_and_names_the_problems():
    with pytest.raises(ConfigInvalid) as caught:
        load_config("use_case: x\nfields: []\nlayout: double\n", "uc/config.yaml")
    error = caught.value
    assert error.message.startswith("config uc/config.yaml has 2 problems: ")
    assert "layout: expected one of 'single', 'separate', got 'double'" in error.message
    assert "fields: no fields; expected at least one field to evaluate" in error.message
    assert error.details["problems"][0] == {"path": "layout", "message": "expected one of 'single', 'separate', got 'double'"}
    assert error.code == "config_invalid" and error.http_status == 400


@pytest.mark.parametrize(
    "field, path, message",
    [
        ({"name": "x", "type": "string", "min": 1}, "fields[0].min", "bounds apply to integer and number fields; this field is string"),
        ({"name": "x", "type": "integer", "min": 5, "max": 1}, "fields[0].min", "min 5.0 is greater than max 1.0; expected min <= max"),
        ({"name": "x", "type": "string", "dayfirst": True}, "fields[0].dayfirst", "applies to date fields; this field is string"),
        ({"name": "x", "type": "number", "categories": ["a"]}, "fields[0].categories", "only category fields have categories; this field is number"),
        ({"name": "x", "type": "category", "categories": ["Eur", "EUR "]}, "fields[0].categories",
         "values repeat when compared without case or spacing; expected distinct values"),
        ({"name": "x", "type": "date", "match": {"kind": "date", "tolerance_days": -2}}, "fields[0].match.tolerance_days",
         "expected a number of days >= 0, got -2"),
        ({"name": "x", "match": {"tolerance": 1}}, "fields[0].match.kind",
         "expected one of exact, normalized_text, numeric, date, category; missing"),
        ({"name": "x", "match": {"kind": "numeric", "tol": 1}, "type": "number"}, "fields[0].match.tol",
         "unknown option; expected one of abs_tolerance, rel_tolerance"),
        ({"name": "all_matched"}, "fields[0].name", "'all_matched' is reserved for the results; expected another name"),
        ({"name": "x", "required": "yes please"}, "fields[0].required", "expected true or false, got 'yes please'"),
        ({"name": "x", "truth_column": "record_id"}, "fields[0]",
         "column 'record_id' is already read for record_id; expected each field to have its own columns"),
    ],
)  # fmt: skip
def test_field_problems(field, path, message):
    assert problems_of(json.dumps({"use_case": "u", "fields": [field]})) == {path: message}


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the config is empty; expected YAML or JSON"),
        ("use_case: [unclosed\n", "not valid YAML at line 2 column 1: expected ',' or ']', but got '<stream end>'"),
        ('{"use_case": "u",}', "not valid JSON at line 1 column 18: Expecting property name enclosed in double quotes"),
        ("- a\n- b\n", None),
    ],
)
def test_unparseable_configs(text, message):
    problems = problems_of(text)
    if message is None:
        assert problems == {"(top level)": "expected a mapping, got ['a', 'b']"}
    else:
        assert problems == {"(file)": message}


def test_rules_and_column_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("""
use_case: u
layout: separate
record_id: id
fields:
  - {name: vendor, match: {kind: normalized_text, punctuation: false}}
  - {name: due, type: date, match: {kind: date, tolerance_days: 1}, truth_column: Due Date, prediction_column: due_pred}
""")
    config = read_config(path.as_uri())
    vendor, due = config.fields
    assert vendor.match == NormalizedText(punctuation=False)
    assert (config.truth_column(vendor), config.prediction_column(vendor)) == ("vendor", "vendor")
    assert due.match == DateMatch(tolerance_days=1)
    assert (config.truth_column(due), config.prediction_column(due)) == ("Due Date", "due_pred")
