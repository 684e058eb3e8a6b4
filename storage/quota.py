"""Quotas of metered services (migration 0007) as a store facet (`store.quota`).

Promises:
- `acquire(service, limits, tokens, cost)` admits one request or raises one QuotaExceeded
  (service, the limit hit, the seconds until it resets); an admitted request is counted in
  the same group commit that answers, so it is durable before the request goes out. It is
  checked, in order, against what the upstream last said (`observe`), the calendar day's
  requests, tokens and cost (UTC), and the per-minute rates, which are pyrate-limiter's GCRA
  (one theoretical arrival time per rate, kept in `quota_limiter`): a refused request spends
  nothing under any limit.
- `count(service, usage)` adds what requests to a service without limits already spent, counted
  by the caller (a batch chunk's requests, one call per save, not two per request), and says
  whether the upstream has since told of limits (then each request is admitted again).
- `settle(grant, ...)` corrects the grant's minute with the upstream's own token count and
  the real cost, or takes the request back when it never reached the upstream (a 429, no
  answer), so a line run again after a refusal is not counted twice.
- A restart reloads the last two days of usage, the limiter state and the upstream's limits:
  nothing is forgotten and nothing counted again. The limiter's state is absolute time, so a
  clock moved forward gives at most the configured rate, never a burst of everything parked.
- Limits are the caller's (functions/quota/settings.py): the store keeps counts, not policy.
"""

from __future__ import annotations

import logging
import math
import time

import msgspec
from pyrate_limiter import GCRA, Duration, Rate

from dropwire.functions.kit.errors import QuotaExceeded
from dropwire.storage.commit_group import EPOCH, INT64, STRING, CommitGroup, TableSpec
from dropwire.storage.writer import Facet

USAGE = TableSpec("quota_usage", (("service", STRING), ("minute", EPOCH), ("requests", INT64), ("tokens", INT64),
                                  ("input_tokens", INT64), ("output_tokens", INT64), ("cost_usd", EPOCH)),
                  key=("service", "minute"), timestamps=frozenset({"minute"}))
LIMITER = TableSpec("quota_limiter", (("service", STRING), ("rate", STRING), ("tat_us", INT64), ("updated_at", EPOCH)),
                    key=("service", "rate"), timestamps=frozenset({"updated_at"}))
UPSTREAM = TableSpec("quota_upstream", (("service", STRING), ("metric", STRING), ("limit", INT64), ("remaining", INT64),
                                        ("reset_at", EPOCH), ("observed_at", EPOCH)),
                     key=("service", "metric"), timestamps=frozenset({"reset_at", "observed_at"}))
DAY, MINUTE = 86400.0, 60.0
log = logging.getLogger("dropwire.quota")
_GCRA = GCRA()


class Limits(msgspec.Struct, kw_only=True, frozen=True):
    """One service's limits as the store applies them; 0 means no limit."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    requests_per_day: int = 0
    tokens_per_day: int = 0
    #: The UTC day's cost budget.
    cost_per_day_usd: float = 0.0
    #: Requests admitted at once before GCRA paces them (1: evenly spaced, never above the rate).
    request_burst: int = 1

    @property
    def unlimited(self) -> bool:
        return not (self.requests_per_minute or self.tokens_per_minute or self.requests_per_day or self.tokens_per_day
                    or self.cost_per_day_usd)


class Observation(msgspec.Struct, kw_only=True, frozen=True):
    """What an upstream said about one of its limits (requests or tokens)."""

    metric: str
    limit: int | None
    remaining: int | None
    reset_at: float


class Usage(msgspec.Struct, kw_only=True, frozen=True):
    """What requests of one minute spent, counted by their caller (`count`)."""

    minute: float
    requests: int
    tokens: int
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Grant(msgspec.Struct, kw_only=True, frozen=True):
    service: str
    minute: float
    tokens: int
    cost_usd: float
    #: Counted durably before the request went out (a service with limits), else write-behind.
    durable: bool = True


def _minute(now: float) -> float:
    return math.floor(now / MINUTE) * MINUTE


def _day(now: float) -> float:
    return math.floor(now / DAY) * DAY


class Quota(Facet):
    def __init__(self, writer) -> None:
        super().__init__(writer)
        # (service, minute) -> [requests, tokens, input_tokens, output_tokens, cost]
        self._usage: dict[tuple[str, float], list] = {}
        self._stored: set[tuple[str, float]] = set()
        self._tat: dict[tuple[str, str], int] = {}
        self._upstream: dict[tuple[str, str], Observation] = {}
        # Minutes before this are no longer held (what a restart would not reload either).
        self._held_from = 0.0

    def load(self, con, *, restart_grace: bool) -> None:
        since = _day(time.time()) - DAY
        self._usage = {(s, m): [r, t, i, o, c] for s, m, r, t, i, o, c in con.execute(
            "SELECT service, epoch(minute), requests, tokens, input_tokens, output_tokens, cost_usd FROM quota_usage "
            "WHERE minute >= to_timestamp(?)", [since]).fetchall()}
        self._stored = set(self._usage)
        self._held_from = since
        self._tat = {(s, r): tat for s, r, tat in con.execute("SELECT service, rate, tat_us FROM quota_limiter").fetchall()}
        self._upstream = {(s, m): Observation(metric=m, limit=l, remaining=r, reset_at=at) for s, m, l, r, at in con.execute(
            'SELECT service, metric, "limit", remaining, epoch(reset_at) FROM quota_upstream').fetchall()}

    def begin_cycle(self, now: float) -> None:
        """Once the day turns, forget the minutes of the day before yesterday: the usage held
        stays two days, as a restart reloads it, not everything since the process started."""
        since = _day(now) - DAY
        if since > self._held_from:
            self._held_from = since
            for key in [key for key in self._usage if key[1] < since]:
                del self._usage[key]
                self._stored.discard(key)

    # ------------------------------------------------------------------ writes

    def acquire(self, service: str, limits: Limits, *, tokens: int = 0, cost_usd: float = 0.0) -> Grant:
        """Admit one request of about `tokens` tokens and `cost_usd`, or raise QuotaExceeded.

        A service without limits, while its upstream has not said how much is left, cannot refuse,
        so it is counted write-behind (in the next group commit, not waited for): a metered call
        there costs no commit on its path; a kill -9 may forget that last commit's counts."""
        now = time.time()
        if limits.unlimited and not self._upstream_limits(service, now):
            minute = _minute(now)
            self._behind(lambda batch, at: self._count(service, minute, tokens, cost_usd, batch, at))
            return Grant(service=service, minute=minute, tokens=tokens, cost_usd=cost_usd, durable=False)
        return self.writer.call(lambda batch, now: self._op_acquire(service, limits, tokens, cost_usd, batch, now))

    def settle(self, grant: Grant, *, sent: bool, input_tokens: int = 0, output_tokens: int = 0,
               cost_usd: float = 0.0) -> None:
        """What the admitted request really cost; `sent=False`: it never reached the upstream."""
        op = lambda batch, now: self._op_settle(grant, sent, input_tokens, output_tokens, cost_usd, batch)
        if grant.durable:
            self.writer.call(op)
        else:
            self._behind(op)

    def count(self, service: str, usage: list[Usage]) -> bool:
        """Usage of a service without limits, spent already (nothing could refuse it), counted
        write-behind like `acquire` there. True: its upstream has told of limits since, so the
        caller admits each request again."""
        if usage:
            self._behind(lambda batch, at: [self._add(service, _minute(row.minute), [
                row.requests, row.tokens, row.input_tokens, row.output_tokens, row.cost_usd], batch) for row in usage])
        return self._upstream_limits(service, time.time())

    def _behind(self, op) -> None:
        """Submit without waiting; a failure is logged (nobody waits to hear it)."""
        def logged(future) -> None:
            if future.exception() is not None:
                log.error("quota: a write-behind count failed: %s", future.exception())
        self.writer.submit(op).add_done_callback(logged)

    def observe(self, service: str, observations: list[Observation]) -> None:
        """The upstream's own word on its limits (x-ratelimit-*, Retry-After), kept until its reset."""
        self.writer.call(lambda batch, now: self._op_observe(service, observations, batch, now))

    def _upstream_limits(self, service: str, now: float) -> bool:
        return any(seen.remaining is not None and seen.reset_at > now
                   for (name, _), seen in list(self._upstream.items()) if name == service)

    def _check_upstream(self, service: str, tokens: int, now: float) -> None:
        for metric, need in (("requests", 1), ("tokens", tokens)):
            seen = self._upstream.get((service, metric))
            if seen is not None and seen.remaining is not None and seen.reset_at > now and seen.remaining < max(need, 1):
                raise QuotaExceeded(f"{service}: the upstream has {seen.remaining} {metric} left until it resets",
                                    service=service, limit=f"upstream_{metric}", wait=seen.reset_at - now)

    def _op_acquire(self, service: str, limits: Limits, tokens: int, cost: float, batch: CommitGroup, now: float) -> Grant:
        self._check_upstream(service, tokens, now)
        day = _day(now)
        requests_today, tokens_today, cost_today = self._today(service, day)
        until_tomorrow = day + DAY - now
        for name, used, need, limit in (("requests_per_day", requests_today, 1, limits.requests_per_day),
                                        ("tokens_per_day", tokens_today, tokens, limits.tokens_per_day),
                                        ("cost_per_day_usd", cost_today, cost, limits.cost_per_day_usd)):
            if limit and used + need > limit:
                raise QuotaExceeded(f"{service}: {name} is {limit} and {used:g} is spent today (UTC)", service=service,
                                    limit=name, wait=until_tomorrow)
        advanced: dict[str, int] = {}
        for name, limit, burst, weight in (("requests_per_minute", limits.requests_per_minute, limits.request_burst, 1),
                                           ("tokens_per_minute", limits.tokens_per_minute, limits.tokens_per_minute, tokens)):
            if not limit or not weight:
                continue
            state = (self._tat.get((service, name), 0),)
            new_state, decision = _GCRA.step([Rate(limit, Duration.MINUTE, burst=max(1, min(burst, limit)))], state,
                                             int(now * 1000), weight)
            if not decision.allowed:
                wait = (decision.retry_after_ms or 0) / 1000 if weight <= burst else math.inf
                raise QuotaExceeded(f"{service}: {name} is {limit}", service=service, limit=name, wait=wait)
            advanced[name] = int(new_state[0])
        for name, tat in advanced.items():
            new = (service, name) not in self._tat
            self._tat[(service, name)] = tat
            batch.add(LIMITER, (service, name, tat, now), new=new)
        minute = _minute(now)
        self._count(service, minute, tokens, cost, batch, now)
        return Grant(service=service, minute=minute, tokens=tokens, cost_usd=cost)

    def _count(self, service: str, minute: float, tokens: int, cost: float, batch: CommitGroup, now: float) -> None:
        """One admitted request: its minute's usage, and what the upstream said is left spent locally."""
        for metric, spent in (("requests", 1), ("tokens", tokens)):
            seen = self._upstream.get((service, metric))
            if seen is not None and seen.remaining is not None and seen.reset_at > now:
                self._upstream[(service, metric)] = msgspec.structs.replace(seen, remaining=max(0, seen.remaining - spent))
        self._add(service, minute, [1, tokens, 0, 0, cost], batch)

    def _op_settle(self, grant: Grant, sent: bool, input_tokens: int, output_tokens: int, cost: float,
                   batch: CommitGroup) -> None:
        if sent:
            delta = [0, input_tokens + output_tokens - grant.tokens, input_tokens, output_tokens, cost - grant.cost_usd]
        else:
            delta = [-1, -grant.tokens, 0, 0, -grant.cost_usd]
        self._add(grant.service, grant.minute, delta, batch)

    def _op_observe(self, service: str, observations: list[Observation], batch: CommitGroup, now: float) -> None:
        for seen in observations:
            new = (service, seen.metric) not in self._upstream
            self._upstream[(service, seen.metric)] = seen
            batch.add(UPSTREAM, (service, seen.metric, seen.limit, seen.remaining, seen.reset_at, now), new=new)

    def _add(self, service: str, minute: float, delta: list, batch: CommitGroup) -> None:
        if minute < self._held_from:
            # A settle days late (no request lives that long): its stored row is not held, and
            # writing one anew would collide with it; the day it belongs to is over.
            log.warning("quota: a count for %s at minute %s, before the usage held, is dropped", service, minute)
            return
        key = (service, minute)
        row = self._usage.setdefault(key, [0, 0, 0, 0, 0.0])
        for i, value in enumerate(delta):
            row[i] += value
        row[0], row[1] = max(0, row[0]), max(0, row[1])
        batch.add(USAGE, (service, minute, *row), new=key not in self._stored)
        self._stored.add(key)

    def _today(self, service: str, day: float) -> tuple[int, int, float]:
        # The day's minutes looked up one by one: a bounded 1,440 lookups, where a scan of every
        # minute held would grow with the process's uptime (the writer thread pays it per request).
        requests = tokens = 0
        cost = 0.0
        for index in range(int(DAY // MINUTE)):
            row = self._usage.get((service, day + index * MINUTE))
            if row is not None:
                requests, tokens, cost = requests + row[0], tokens + row[1], cost + row[4]
        return requests, tokens, cost
