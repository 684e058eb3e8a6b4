"""A batch chunk's meter over the real control socket to a real store: a service without limits
is counted by the meter and handed over once per flush (not two round trips per request),
and the meter goes back to admitting each request through the store as soon as the upstream
tells of limits, in an answer it sees or one another process saw (learned at the flush)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from dropwire.functions.kit.errors import QuotaExceeded
from dropwire.functions.quota.meter import Meter
from dropwire.functions.quota.settings import QuotaSettings
from dropwire.local_emulator.control import ControlClient, ControlServer
from dropwire.storage.quota import Limits, Observation
from dropwire.storage.store import Store

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture
def remote(tmp_path):
    key = secrets.token_hex(8)
    with Store.open(tmp_path / "db.duckdb") as store:
        server = ControlServer(store, tmp_path / "control.sock", key).start()
        client = ControlClient(tmp_path / "control.sock", key)
        try:
            yield store, client
        finally:
            client.close()
            server.close()


def usage(store: Store, service: str) -> tuple:
    store.quota.acquire("other", Limits(requests_per_day=1000))  # waits for a commit: the write-behind counts are in
    return store.query("SELECT sum(requests), sum(tokens), sum(input_tokens), sum(output_tokens) FROM quota_usage "
                       "WHERE service = ?", [service])[0]


async def run(meter: Meter, n: int, status: int = 200, headers: dict | None = None) -> None:
    for _ in range(n):
        grant = await meter.admit(BODY)
        await meter.answered(grant, BODY, status, headers or {}, 3, 2)


def test_an_unlimited_services_requests_are_counted_by_the_meter_and_handed_over_at_the_flush(remote):
    store, client = remote
    meter = Meter(client.quota, QuotaSettings(), "free", tally=True)
    asyncio.run(run(meter, 20))
    asyncio.run(run(meter, 2, status=429))  # refused: never counted
    assert usage(store, "free") == (1, 5, 3, 2)  # only the first went through the store (it said: no limits)
    meter.flush()
    assert usage(store, "free") == (20, 100, 60, 40)
    meter.flush()  # nothing new: nothing counted twice
    assert usage(store, "free") == (20, 100, 60, 40)


def test_a_meter_without_tally_admits_each_request_through_the_store(remote):
    store, client = remote
    asyncio.run(run(Meter(client.quota, QuotaSettings(), "direct"), 5))
    assert usage(store, "direct") == (5, 25, 15, 10)


def test_the_upstreams_word_in_an_answer_stops_the_tally_and_its_limit_is_applied_at_once(remote):
    store, client = remote
    meter = Meter(client.quota, QuotaSettings(), "free", tally=True)
    asyncio.run(run(meter, 3))
    spent = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
    asyncio.run(run(meter, 1, headers=spent))
    with pytest.raises(QuotaExceeded) as refused:
        asyncio.run(meter.admit(BODY))
    assert refused.value.limit == "upstream_requests" and 25 < refused.value.wait <= 30
    meter.flush()
    assert usage(store, "free")[0] == 4


def test_limits_another_process_heard_of_are_learned_at_the_next_flush(remote):
    store, client = remote
    meter = Meter(client.quota, QuotaSettings(), "free", tally=True)
    asyncio.run(run(meter, 2))
    store.quota.observe("free", [Observation(metric="requests", limit=10, remaining=0, reset_at=time.time() + 30)])
    asyncio.run(run(meter, 1))  # still tallied: this meter has not heard yet
    meter.flush()
    with pytest.raises(QuotaExceeded):
        asyncio.run(meter.admit(BODY))
    assert usage(store, "free")[0] == 3
