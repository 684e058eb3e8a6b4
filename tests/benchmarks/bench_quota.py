"""Batch throughput against an upstream limited to N requests per minute: achieved rate vs N
(target >= 95% of N, never above it), over one minute, in two set-ups measured in the same run:

1. the quota service limited locally to N rpm (pyrate-limiter's GCRA paces the lines evenly);
2. no local limit: the batch follows only what the upstream says (x-ratelimit-* headers,
   429 + Retry-After) and parks in quota_exceeded until its reset.

The upstream is an instant OpenAI-compatible server in its own process behind the runtime's
own rate limit (runtime/textgen/rate_limit.py: a sliding window of N per 60 s), recording when
it admitted each request. Size: BENCH_QUOTA_RPM (default 60); about 1.5 minutes in all."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from tests.benchmarks.bench_batches import _emulate, _stop, _wait_http
from tests.conftest import REPO
from tests.platform.conftest import free_port

RPM = int(os.environ.get("BENCH_QUOTA_RPM", "60"))
WINDOW_S = 60.0
TOKEN = "bench"
SERVICE = "batch-upstream"


def serve(port: int, limit: int) -> None:
    """The limited upstream, in this process until killed."""
    import uvicorn
    from litestar import Litestar, get, post
    from litestar.params import JSONBody

    from dropwire.runtime.textgen.rate_limit import RequestRateLimit, rate_limit_middleware

    admitted: list[float] = []
    limited = RequestRateLimit(limit, WINDOW_S)

    @get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "echo-1", "object": "model", "created": 0, "owned_by": "bench"}]}

    @post("/v1/chat/completions", status_code=200)
    async def chat(data: JSONBody[dict]) -> dict:
        admitted.append(time.time())
        return {"id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": "echo-1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}

    @get("/admitted")
    async def seen() -> dict:
        return {"admitted": admitted, "refused": limited.refused}

    app = rate_limit_middleware(limited)(Litestar([models, chat, seen], logging_config=None))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _most_in_any_window(times: list[float]) -> int:
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= WINDOW_S:
            start += 1
        most = max(most, end - start + 1)
    return most


def _measure(root: Path, name: str, quota: dict) -> tuple[int, int, int]:
    """(answered in the first minute, most in any 60 s window, 429s) for one set-up."""
    up_port, http_port = free_port(), free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.bench_quota", "serve", str(up_port), str(RPM)],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    emulator = None
    try:
        _wait_http(f"http://127.0.0.1:{up_port}/v1/models")
        emulator = _emulate(root / name, http_port, root / f"{name}.log",
                            DROPWIRE_BATCHES__BASE_URL=f"http://127.0.0.1:{up_port}/v1",
                            DROPWIRE_QUOTA__SERVICES=json.dumps({SERVICE: quota}),
                            DROPWIRE_QUOTA__WAIT_IN_PLACE_SECONDS="5")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=TOKEN, max_retries=0, timeout=60)
        lines = b"".join(json.dumps({"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "echo-1", "max_tokens": 1,
                                              "messages": [{"role": "user", "content": f"line {i}"}]}}).encode() + b"\n"
                         for i in range(3 * RPM))
        file = client.files.create(file=("quota.jsonl", io.BytesIO(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 120

        def upstream_saw() -> dict:
            return httpx.get(f"http://127.0.0.1:{up_port}/admitted", timeout=10).json()

        while not upstream_saw()["admitted"]:
            assert time.monotonic() < deadline, "no line reached the upstream"
            time.sleep(0.2)
        first = upstream_saw()["admitted"][0]
        time.sleep(max(0.0, first + WINDOW_S + 5 - time.time()))
        seen = upstream_saw()
        client.batches.cancel(batch.id)
        times = seen["admitted"]
        in_first_minute = sum(1 for at in times if at < first + WINDOW_S)
        return in_first_minute, _most_in_any_window(times), seen["refused"]
    finally:
        if emulator is not None:
            _stop(emulator)
        upstream.terminate()
        upstream.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dropwire-bench-quota-") as tmp:
        root = Path(tmp)
        # Both set-ups side by side (each its own upstream and emulator), so the run takes one
        # measured minute, not two.
        setups = {"local limit N rpm": ("local", {"requests_per_minute": RPM}), "upstream headers only": ("upstream", {})}
        with ThreadPoolExecutor(len(setups)) as pool:
            futures = {label: pool.submit(_measure, root, name, quota) for label, (name, quota) in setups.items()}
            rows = [(label, future.result()) for label, future in futures.items()]
    print(f"upstream limit N = {RPM} requests per {WINDOW_S:.0f} s (sliding)")
    print(f"{'set-up':>24} {'first minute':>13} {'vs N':>7} {'max in any 60 s':>16} {'above N?':>9} {'429s':>5}")
    for name, (achieved, most, refused) in rows:
        print(f"{name:>24} {achieved:>13} {achieved / RPM:>6.1%} {most:>16} {'yes' if most > RPM else 'no':>9} "
              f"{refused:>5}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
