"""The client's retry and polling rules (seed 2) over all inputs."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dropwire.functions.training_analysis.client import RequestRejected, RetryConfig, TrainingAnalysisClient, _retry_after


@given(attempt=st.integers(0, 40), base=st.floats(0.01, 5), factor=st.floats(1, 4), cap=st.floats(0.01, 60))
def test_backoff_grows_is_capped_and_jittered_by_at_most_ten_percent(attempt, base, factor, cap):
    config = RetryConfig(base_delay=base, backoff_factor=factor, max_delay=cap)
    expected = min(base * factor ** attempt, cap)
    delay = config.get_delay(attempt)
    assert expected <= delay <= expected * 1.1 + 1e-9


def test_the_seeds_defaults():
    config = RetryConfig()
    assert (config.max_retries, config.base_delay, config.max_delay, config.backoff_factor) == (3, 1.0, 10.0, 2.0)
    assert set(config.retryable_statuses) == {408, 429, 500, 502, 503, 504}
    assert 400 not in config.retryable_statuses and 404 not in config.retryable_statuses


@given(seconds=st.integers(0, 10_000))
def test_retry_after_in_seconds_or_as_a_date(seconds):
    assert _retry_after(str(seconds)) == seconds
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=seconds + 5), usegmt=True)
    assert seconds <= _retry_after(when) <= seconds + 6
    assert _retry_after(None) is None and _retry_after("soon") is None


def test_invalid_requests_fail_fast_without_a_request():
    client = TrainingAnalysisClient("http://127.0.0.1:9")
    with pytest.raises(RequestRejected, match="mlflow_uri"):
        client.analyze("abc", "")
    assert client.attempts == []
    with pytest.raises(ValueError, match="fallback"):
        TrainingAnalysisClient("http://127.0.0.1:9", fallback="ignore")


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_the_client_side_imports_neither_litestar_nor_duckdb():
    code = ("import sys\n"
            "for name in ('litestar', 'duckdb'):\n"
            "    sys.modules[name] = None  # importing it now raises\n"
            "import dropwire.functions.training_analysis.client\n"
            "import dropwire.functions.training_analysis.torch_helper\n"
            "import dropwire.functions.training_analysis.lightning\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
