"""Upstream rate-limit headers read as OpenAI sends them, malformed ones ignored (logged
once); quota settings that make no sense refused at start, naming the setting."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dropwire.functions.quota import headers
from dropwire.functions.quota.headers import duration_seconds, observations, retry_after_seconds
from dropwire.local_emulator.settings import SettingsError, load_settings

NOW = 1_000_000.0


@pytest.mark.parametrize("text, seconds", [("6m0s", 360.0), ("12ms", 0.012), ("1s", 1.0), ("1.5s", 1.5),
                                           ("1h2m3.5s", 3723.5), ("2", 2.0), ("0.25", 0.25), ("20ms", 0.02)])
def test_openai_durations(text, seconds):
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1s", "1x", "m", "1.2.3s", "nan", "inf", "-3"])
def test_malformed_durations_are_none(text):
    assert duration_seconds(text) is None


@given(h=st.integers(0, 48), m=st.integers(0, 59), s=st.integers(0, 59), ms=st.integers(0, 999))
def test_every_go_style_duration_reads_back(h, m, s, ms):
    text = (f"{h}h" if h else "") + (f"{m}m" if m or h else "") + f"{s}s" + (f"{ms}ms" if ms else "")
    assert duration_seconds(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


def test_headers_become_observations_and_a_429_blocks_until_retry_after():
    sent = {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "12ms"}
    seen = {o.metric: o for o in observations(sent, NOW, service="s", refused=False)}
    assert (seen["requests"].remaining, seen["requests"].reset_at) == (0, NOW + 360)
    assert (seen["tokens"].limit, seen["tokens"].remaining, seen["tokens"].reset_at) == (1000, 900, pytest.approx(NOW + 0.012))
    blocked = {o.metric: o for o in observations({**sent, "retry-after-ms": "1500"}, NOW, service="s", refused=True)}
    assert blocked["requests"].remaining == 0 and blocked["requests"].reset_at == NOW + 1.5
    # A 429 that only says its reset: the longest reset of what is spent.
    assert observations(sent, NOW, service="s", refused=True)[-1].reset_at == NOW + 360


def test_retry_after_in_seconds_or_an_http_date():
    assert retry_after_seconds({"retry-after": "3"}, NOW) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}, NOW) == 0.25
    assert retry_after_seconds({"retry-after": "Thu, 01 Jan 1970 00:00:10 GMT"}, 0.0) == 10.0


def test_malformed_or_contradictory_headers_are_ignored_and_logged_once(caplog):
    headers._logged.clear()
    bad = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "50", "x-ratelimit-reset-requests": "1s",
           "x-ratelimit-remaining-tokens": "lots", "x-ratelimit-reset-tokens": "whenever", "retry-after": "later"}
    with caplog.at_level(logging.WARNING, logger="dropwire.quota"):
        for _ in range(3):
            assert observations(bad, NOW, service="svc", refused=False) == []
            assert retry_after_seconds(bad, NOW, "svc") is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4  # each bad header once, however often it came
    assert any("x-ratelimit-remaining-requests" in m and "at most x-ratelimit-limit-requests (10)" in m for m in messages)


@pytest.mark.parametrize("variables, named", [
    ({"DROPWIRE_QUOTA__SERVICES": '{"up": {"requests_per_minute": -1}}'}, "quota.services.up.requests_per_minute"),
    ({"DROPWIRE_QUOTA__SERVICES": '{"up": {"tokens_per_minute": 100}}'}, "quota.services.up.tokens_per_minute is 100, below one request"),
    ({"DROPWIRE_QUOTA__SERVICES": '{"up": {"request_burst": 0}}'}, "quota.services.up.request_burst"),
    ({"DROPWIRE_QUOTA__SERVICES": '{"up": {"cost_per_day_usd": 5}}'}, "quota.services.up.prices is empty"),
    ({"DROPWIRE_QUOTA__SERVICES": '{"up": {"prices": {"m": [1]}}}'}, "quota.services.up.prices.m"),
    ({"DROPWIRE_QUOTA__SERVICES": '{"up": {"requests_per_minute": 10, "requests_per_day": 5}}'}, "requests_per_day (5)"),
    ({"DROPWIRE_QUOTA__MAX_PARK_SECONDS": "0"}, "quota.max_park_seconds"),
    ({"DROPWIRE_QUOTA__SERVICES": "{not json"}, "DROPWIRE_QUOTA__SERVICES must be a JSON object"),
    ({"DROPWIRE_RUNTIME__TEXTGEN__RATE_LIMIT_WINDOW_S": "0"}, "rate_limit_window_s"),
    # A chunk with no line in flight would wait forever; no save interval would save on every line.
    ({"DROPWIRE_BATCHES__CONCURRENCY": "0"}, "batches.concurrency must be at least 1, got 0"),
    ({"DROPWIRE_BATCHES__SAVE_EVERY_SECONDS": "0"}, "batches.save_every_seconds must be more than 0 seconds"),
    ({"DROPWIRE_BATCHES__RETRY_MAX_SECONDS": "0.1"}, "batches.retry_base_seconds (0.5) must be >= 0 and at most"),
])
def test_limits_that_make_no_sense_are_refused_naming_the_setting(variables, named):
    with pytest.raises(SettingsError) as refused:
        load_settings(environ=variables)
    assert named in str(refused.value)
