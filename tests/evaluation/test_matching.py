"""Each match rule on examples, and the rules that must hold for every input (hypothesis)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.functions.evaluation.core import CategoryMatch, DateMatch, Exact, FieldSpec, NormalizedText, Numeric
from dropwire.functions.evaluation.core.matching import compared, values_match


def judge(field: FieldSpec, pairs: list[tuple[str | None, str | None]]) -> list[bool]:
    frame = pl.DataFrame({"t": [t for t, _ in pairs], "p": [p for _, p in pairs]}, schema={"t": pl.String, "p": pl.String})
    return frame.select(values_match(field, compared(field, pl.col("t")), compared(field, pl.col("p")))).to_series().to_list()


def test_exact_compares_values_of_the_field_type():
    assert judge(FieldSpec(name="s"), [("Abc", "Abc"), (" Abc ", "Abc"), ("Abc", "abc"), ("Abc", None)]) == [True, True, False, False]
    assert judge(FieldSpec(name="i", type="integer"), [("3", "3.0"), ("3", "4"), ("3", "three")]) == [True, False, False]
    assert judge(FieldSpec(name="n", type="number"), [("0.5", ".5"), ("1e3", "1000"), ("0.1", "0.10001")]) == [True, True, False]
    assert judge(FieldSpec(name="b", type="boolean"), [("yes", "TRUE"), ("0", "n"), ("true", "false")]) == [True, True, False]
    assert judge(FieldSpec(name="c", type="category", categories=["EUR"]), [("EUR", "EUR"), ("EUR", "eur")]) == [True, False]


def test_normalised_text_options():
    pairs = [("ACME, Inc.", "acme inc"), ("a  b", "a b"), ("Ab", "ab"), ("a.b", "ab")]
    assert judge(FieldSpec(name="s", match=NormalizedText()), pairs) == [True, True, True, True]
    assert judge(FieldSpec(name="s", match=NormalizedText(case=False)), pairs) == [False, True, False, True]
    assert judge(FieldSpec(name="s", match=NormalizedText(punctuation=False)), pairs) == [False, True, True, False]
    assert judge(FieldSpec(name="s", match=NormalizedText(whitespace=False)), pairs) == [True, False, True, True]


def test_numeric_tolerances():
    absolute = FieldSpec(name="n", type="number", match=Numeric(abs_tolerance=0.5))
    assert judge(absolute, [("10", "10.5"), ("10", "10.51"), ("-1", "-1.4"), ("1", "x")]) == [True, False, True, False]
    relative = FieldSpec(name="n", type="number", match=Numeric(rel_tolerance=0.1))
    assert judge(relative, [("100", "109"), ("100", "111"), ("0", "0.0001"), ("-50", "-54")]) == [True, False, False, True]


def test_dates_in_common_formats_and_day_order():
    dayfirst = FieldSpec(name="d", type="date", dayfirst=True, match=DateMatch())
    pairs = [("2024-03-04", "04/03/2024"), ("2024-03-04", "4.3.2024"), ("2024-03-04", "4 Mar 2024"),
             ("2024-03-04", "March 4, 2024"), ("2024-03-04", "2024-03-04 00:00:00"), ("2024-03-04", "03/04/2024")]  # fmt: skip
    assert judge(dayfirst, pairs) == [True, True, True, True, True, False]
    monthfirst = FieldSpec(name="d", type="date", match=DateMatch(tolerance_days=1))
    assert judge(monthfirst, [("2024-03-04", "03/04/2024"), ("2024-03-04", "03/05/2024"), ("2024-03-04", "03/06/2024")]) == [True, True, False]


def test_category_ignores_case_and_spacing_but_not_the_allowed_set():
    field = FieldSpec(name="c", type="category", categories=["Credit Card", "Cash"], match=CategoryMatch())
    pairs = [("Credit Card", "credit  card"), ("Cash", " CASH"), ("Cash", "Credit Card"), ("Other", "other")]
    assert judge(field, pairs) == [True, True, False, False]


case_changes = st.sampled_from([str.upper, str.lower, str.title, str.swapcase])
words = st.lists(st.text(alphabet="abcdefgxyzéüABCXYZ0123,.-!'", min_size=1, max_size=8), min_size=1, max_size=6)
spaces = st.text(alphabet=" \t", min_size=1, max_size=3)


@given(words=words, change=case_changes, gaps=st.lists(spaces, min_size=7, max_size=7))
def test_normalised_text_is_invariant_to_case_and_whitespace(words, change, gaps):
    truth = " ".join(words)
    # Same words, other case, other runs of whitespace between them and around them.
    prediction = gaps[0] + "".join(w + gaps[(i % 6) + 1] for i, w in enumerate(change(truth).split(" ")))
    assert judge(FieldSpec(name="s", match=NormalizedText()), [(truth, prediction)]) == [True]


@given(words=words)
def test_normalised_text_still_tells_different_words_apart(words):
    truth = " ".join(words)
    assert judge(FieldSpec(name="s", match=NormalizedText()), [(truth, truth + " extra")]) == [False]


def test_numeric_tolerance_holds_at_its_boundary_as_written():
    # Binary floating point makes 99.51 - 99.50 = 0.010000000000005116 > 0.01.
    field = FieldSpec(name="n", type="number", match=Numeric(abs_tolerance=0.01))
    assert judge(field, [("99.50", "99.51"), ("1.10", "1.11"), ("10.00", "10.01"), ("99.50", "99.5101")]) == [True, True, True, False]
    relative = FieldSpec(name="n", type="number", match=Numeric(rel_tolerance=0.1))
    assert judge(relative, [("1.1", "1.21"), ("1.1", "1.2101"), ("-3.3", "-3.63")]) == [True, False, True]
    # Beyond the decimal range the rule still holds, in floating point.
    assert judge(field, [("1e30", "1e30"), ("1e30", "2e30")]) == [True, False]


def within(t: Decimal, p: Decimal, abs_tol: Decimal, rel_tol: Decimal) -> bool:
    return abs(t - p) <= max(abs_tol, rel_tol * abs(t))


def as_written(value: Decimal) -> str:
    return f"{value:f}"


values = st.decimals(min_value=-10**6, max_value=10**6, places=4, allow_nan=False, allow_infinity=False)
tolerances = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)
rel_tolerances = st.decimals(min_value=0, max_value=Decimal("0.5"), places=3, allow_nan=False, allow_infinity=False)
unit = Decimal("0.0001")  # the smallest step of the generated values


@settings(max_examples=300)
@given(t=values, p=values, abs_tol=tolerances, rel_tol=rel_tolerances)
def test_numeric_rule_matches_exactly_when_within_tolerance(t, p, abs_tol, rel_tol):
    field = FieldSpec(name="n", type="number", match=Numeric(abs_tolerance=float(abs_tol), rel_tolerance=float(rel_tol)))
    assert judge(field, [(as_written(t), as_written(p))]) == [within(t, p, abs_tol, rel_tol)]


@settings(max_examples=300)
@given(t=values, tol=tolerances, sign=st.sampled_from([1, -1]), style=st.sampled_from([as_written, str, lambda d: f"{d:e}"]))
def test_abs_tolerance_boundary_is_inclusive_and_one_step_past_it_is_not(t, tol, sign, style):
    field = FieldSpec(name="n", type="number", match=Numeric(abs_tolerance=float(tol)))
    at, past = t + sign * tol, t + sign * (tol + unit)
    assert judge(field, [(style(t), style(at)), (style(t), style(past))]) == [True, False]


@settings(max_examples=300)
@given(t=values, rel=rel_tolerances, sign=st.sampled_from([1, -1]))
def test_rel_tolerance_boundary_is_inclusive_and_one_step_past_it_is_not(t, rel, sign):
    field = FieldSpec(name="n", type="number", match=Numeric(rel_tolerance=float(rel)))
    at = t + sign * rel * abs(t)  # exact: at most 7 decimals
    past = at + sign * Decimal("1e-7")
    assert judge(field, [(as_written(t), as_written(at)), (as_written(t), as_written(past))]) == [True, False]


@given(day=st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31)), shift=st.integers(-3, 3), tolerance=st.integers(0, 3),
       style=st.sampled_from(["%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%d %b %Y", "%B %d, %Y", "%Y%m%d"]))  # fmt: skip
def test_date_rule_reads_any_common_format(day, shift, tolerance, style):
    field = FieldSpec(name="d", type="date", dayfirst=True, match=DateMatch(tolerance_days=tolerance))
    other = day + dt.timedelta(days=shift)
    assert judge(field, [(day.isoformat(), other.strftime(style))]) == [abs(shift) <= tolerance]


@pytest.mark.parametrize("rule", [Exact(), NormalizedText()])
def test_a_missing_value_never_matches(rule):
    assert judge(FieldSpec(name="s", match=rule), [(None, "a"), ("a", None), (None, None)]) == [False, False, False]
