"""The config template a team receives for a new use case: valid YAML whose comments document
every option, with one example field per type."""

from __future__ import annotations

import json

TEMPLATE = """\
# Evaluation config for use case {use_case}
#
# Edit this file and upload it back. It is checked as a whole: if anything is wrong you get
# every problem at once, each naming the option (e.g. fields[2].match.abs_tolerance).
# YAML or JSON are both accepted.

use_case: {use_case}

# How your dataset files are laid out:
#   single   - one file holding, per record, the record id and for every field a truth column
#              and a prediction column (named by the `columns` convention below).
#   separate - a truth file and a predictions file, joined on `record_id`; both name their
#              columns after the fields (or after truth_column / prediction_column).
layout: single

# The column naming each record. Required for layout separate; with layout single it may be
# null, and records are then known by their row number.
record_id: record_id

# Column naming for layout single: field `total` is read from total_true and total_pred.
columns:
  truth_suffix: _true
  prediction_suffix: _pred

# Rules for the dataset as a whole.
dataset:
  # Fewest records the evaluation accepts.
  min_rows: 1
  # Largest share (0 to 1) of missing truth values one column may have; 1 allows any.
  max_missing_share: 1.0
  # Cell values that mean "no value" (compared without case), besides an empty cell.
  missing_values: [NA, N/A, "null", None, NaN]
  # CSV delimiter: auto (detects , ; tab |), or one of "," ";" "\\t" "|".
  delimiter: auto
  # Excel: the sheet to read (the first sheet when null).
  sheet: null

# The fields to evaluate. Per field:
#   name                 the field's name (also its column name, see above)
#   type                 string | integer | number | date | category | boolean
#   required             true: every record must have a truth value (default false)
#   categories           category fields: the allowed values
#   min, max             integer and number fields: inclusive bounds for truth values
#   dayfirst             date fields: 03/04/2024 is 3 April when true, 4 March when false
#   truth_column         column of the truth, when it does not follow the convention
#   prediction_column    column of the prediction, when it does not follow the convention
#   match                how a prediction is judged against the truth; `kind` is one of
#     exact              the same value of the field's type (text ignoring surrounding spaces,
#                        the same number, date or boolean)
#     normalized_text    text compared ignoring what you choose:
#                        case: true, whitespace: true, punctuation: true
#     numeric            |truth - prediction| <= max(abs_tolerance, rel_tolerance * |truth|)
#                        abs_tolerance: 0.0, rel_tolerance: 0.0 (0.01 = 1%)
#     date               the same date in any common format (2024-12-31, 31/12/2024,
#                        31 Dec 2024, ...), give or take tolerance_days: 0
#     category           one of the allowed values, ignoring case and extra spaces
#
# Scoring per field: a correct prediction is a true positive; a wrong one a false positive
# and a false negative; a missing prediction a false negative; a prediction where the truth
# is empty a false positive; both empty counts as correct.
fields:
  - name: invoice_number
    type: string
    required: true
    match: {{kind: exact}}

  - name: supplier_name
    type: string
    match: {{kind: normalized_text, case: true, whitespace: true, punctuation: true}}

  - name: total_amount
    type: number
    min: 0
    match: {{kind: numeric, abs_tolerance: 0.01, rel_tolerance: 0.0}}

  - name: line_count
    type: integer
    min: 0
    max: 1000
    match: {{kind: exact}}

  - name: invoice_date
    type: date
    dayfirst: true
    match: {{kind: date, tolerance_days: 0}}

  - name: currency
    type: category
    categories: [EUR, USD, GBP]
    match: {{kind: category}}

  - name: is_paid
    type: boolean
    match: {{kind: exact}}
"""


def render_template(use_case_name: str) -> str:
    # JSON string quoting is valid YAML and survives any character in the name.
    return TEMPLATE.format(use_case=json.dumps(use_case_name))
