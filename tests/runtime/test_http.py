"""Real HTTP against a real `dropwire runtime serve` process (CPU)."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

from dropwire.runtime.synthetic import generated_csv
from tests.conftest import wait_for
from tests.runtime.conftest import TINY_CONTEXT, RuntimeProcess

ERROR_KEYS = {"error", "message", "details", "timestamp"}
CSV = {"content-type": "text/csv"}


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["error"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], body
    return body


def upload(client: httpx.Client, content: bytes, precompute: bool = False) -> dict:
    response = client.post("/datasets", content=content, headers=CSV, params={"precompute": precompute})
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_upload_draw_cache_hit_png_and_delete(client: httpx.Client) -> None:
    content = generated_csv(60, series=2, seed=11)
    response = client.post("/datasets", content=content, headers=CSV, params={"precompute": False})
    assert response.status_code == 201
    info = response.json()
    assert info["series"] == ["series_0", "series_1"] and info["step"] == "1 hour"
    assert (info["first_index"], info["last_index"]) == (TINY_CONTEXT - 1, 59)
    assert client.post("/datasets", content=content, headers=CSV, params={"precompute": False}).status_code == 200

    handle = info["handle"]
    first = client.get(f"/datasets/{handle}/forecasts/30").json()
    assert first["source"] == "interactive"
    assert first["origin"] == "2024-01-02T06:00:00" and first["timestamps"][0] == "2024-01-02T07:00:00"
    series = first["series"][0]
    assert len(series["history"]) == TINY_CONTEXT and len(series["actual"]) == 6
    assert len(series["density"]) == 6 and len(series["density"][0]) == 64
    assert [band["coverage"] for band in series["bands"]] == [0.9, 0.8, 0.5]
    assert len(series["sample_paths"]) == 4
    again = client.get(f"/datasets/{handle}/forecasts/30").json()
    assert again["source"] == "cache"
    assert again["series"] == first["series"]

    png = client.get(f"/datasets/{handle}/forecasts/59", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and len(png.content) > 10_000
    assert client.get(f"/datasets/{handle}").json()["cached_results"] == 2

    assert client.delete(f"/datasets/{handle}").json() == {"handle": handle, "deleted": True}
    assert_error(client.get(f"/datasets/{handle}/forecasts/30"), 404, "dataset_not_found", handle)
    assert_error(client.delete(f"/datasets/{handle}"), 404, "dataset_not_found")


def test_every_error_has_the_one_shape_and_the_runtime_keeps_serving(client: httpx.Client) -> None:
    assert_error(client.get("/datasets/nope/forecasts/3"), 404, "dataset_not_found", "'nope'")
    assert_error(client.post("/datasets", content=b"\x00\x01binary", headers=CSV), 422, "invalid_csv", "binary")
    assert_error(client.post("/datasets", content=b"x,a\nfoo,1\n", headers=CSV), 422, "invalid_csv", "no timestamp column")
    bad_value = b"timestamp,a\n2024-01-01,1\n2024-01-02,lots\n"
    body = assert_error(client.post("/datasets", content=bad_value, headers=CSV), 422, "invalid_csv", "line 3, column 'a'")
    assert body["details"] == {"line": 3, "column": "a"}
    gap = b"timestamp,a\n2024-01-01,1\n2024-01-02,2\n2024-01-05,3\n"
    assert_error(client.post("/datasets", content=gap, headers=CSV), 422, "invalid_csv", "gaps")
    duplicate = b"timestamp,a\n2024-01-01,1\n2024-01-01,2\n"
    assert_error(client.post("/datasets", content=duplicate, headers=CSV), 422, "invalid_csv", "duplicate timestamp")
    short = generated_csv(TINY_CONTEXT - 1)
    assert_error(client.post("/datasets", content=short, headers=CSV), 422, "invalid_csv", f"at least {TINY_CONTEXT}")
    huge = b"timestamp,a\n" + b"2024-01-01T00:00:00,1.0\n" * 90_000  # > 2,000,000 bytes
    assert_error(client.post("/datasets", content=huge, headers=CSV), 413, "upload_too_large", "2000000 bytes")

    handle = upload(client, generated_csv(40, seed=12))["handle"]
    body = assert_error(client.get(f"/datasets/{handle}/forecasts/40"), 422, "index_out_of_range", "7..39")
    assert body["details"] == {"index": 40, "first": 7, "last": 39}
    assert_error(client.get(f"/datasets/{handle}/forecasts/-1"), 422, "index_out_of_range")
    body = assert_error(client.get(f"/datasets/{handle}/forecasts/9", params={"format": "gif"}), 400, "invalid_request")
    assert body["details"]["errors"]
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.put(f"/datasets/{handle}"), 405, "method_not_allowed")
    assert_error(client.post("/quick-draw", content=b"", headers=CSV), 422, "invalid_csv", "empty")

    assert client.get("/health").json()["status"] == "ok"
    assert client.get(f"/datasets/{handle}/forecasts/39").status_code == 200
    client.delete(f"/datasets/{handle}")


def test_samples_gone_nan_are_refused_naming_the_series_and_step(client: httpx.Client) -> None:
    # Finite values whose sum overflows float64 scale to NaN, and so do the model's samples;
    # values whose spread overflows it scale fine but unscale to infinities.
    for huge in ("1.6e308", "-1.7e308", "1.7e308"), ("-1.7e308", "1.7e308"):
        rows = [f"2024-01-01T{h:02d}:00:00,{h * 0.5},{huge[h % len(huge)]}" for h in range(20)]
        content = ("timestamp,calm,huge\n" + "\n".join(rows) + "\n").encode()
        handle = upload(client, content)["handle"]
        body = assert_error(client.get(f"/datasets/{handle}/forecasts/19"), 422, "non_finite_forecast",
                            "series 'huge'", "step 1 ", "index 19")
        assert body["details"] == {"handle": handle, "index": 19, "series": "huge", "step": 1}
        assert_error(client.post("/quick-draw", content=content, headers=CSV), 422, "non_finite_forecast", "'huge'")
        client.delete(f"/datasets/{handle}")
    healthy = upload(client, generated_csv(40, seed=13))["handle"]
    assert client.get(f"/datasets/{healthy}/forecasts/39").status_code == 200
    client.delete(f"/datasets/{healthy}")


def test_quick_draw_computes_only_the_last_index_and_leaves_nothing(client: httpx.Client, runtime: RuntimeProcess) -> None:
    before = runtime.stats()
    forecast = client.post("/quick-draw", content=generated_csv(50, seed=13), headers=CSV).json()
    assert forecast["index"] == 49 and forecast["source"] == "interactive"
    png = client.post("/quick-draw", content=generated_csv(50, seed=14), headers=CSV, params={"format": "png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    after = runtime.stats()
    assert after["scheduler"]["computed_interactive"] - before["scheduler"]["computed_interactive"] == 2
    assert after["scheduler"]["computed_background"] == before["scheduler"]["computed_background"]
    assert after["data_cache"]["entries"] == before["data_cache"]["entries"]
    assert after["result_cache"]["entries"] == before["result_cache"]["entries"]
    assert_error(client.get(f"/datasets/{forecast['handle']}"), 404, "dataset_not_found")

    # A quick draw of something uploaded for keeps shares it and leaves it in place.
    kept = upload(client, generated_csv(50, seed=15))["handle"]
    assert client.post("/quick-draw", content=generated_csv(50, seed=15), headers=CSV).json()["handle"] == kept
    assert client.get(f"/datasets/{kept}/forecasts/49").json()["source"] == "cache"
    client.delete(f"/datasets/{kept}")


def test_concurrent_identical_requests_are_computed_once(client: httpx.Client, runtime: RuntimeProcess) -> None:
    handle = upload(client, generated_csv(80, seed=16))["handle"]
    before = runtime.stats()["scheduler"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=runtime.url, timeout=60) as http:
            return await asyncio.gather(*(http.get(f"/datasets/{handle}/forecasts/50") for _ in range(12)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    bodies = [r.json() for r in responses]
    assert all(body["series"] == bodies[0]["series"] for body in bodies)
    after = runtime.stats()["scheduler"]
    assert after["computed_interactive"] - before["computed_interactive"] == 1
    shared = after["coalesced"] - before["coalesced"]
    from_cache = sum(body["source"] == "cache" for body in bodies)
    assert shared + from_cache == 11
    client.delete(f"/datasets/{handle}")


@pytest.fixture(autouse=True)
def lane_let_go(client: httpx.Client):
    """Whatever a test does, the next one starts with the background lane going."""
    yield
    client.put("/forecasts/background", json={"paused": False})


def hold_background(client: httpx.Client, paused: bool) -> dict:
    """Hold the background lane still (or let it go on): what comes first is then seen on a
    condition, not on how fast the lane walks."""
    response = client.put("/forecasts/background", json={"paused": paused})
    assert response.status_code == 200, response.text
    assert response.json()["paused"] is paused
    return response.json()


def test_a_click_beats_the_backlog_and_a_delete_stops_the_background(client: httpx.Client, runtime: RuntimeProcess) -> None:
    hold_background(client, True)
    info = upload(client, generated_csv(4000, seed=17), precompute=True)
    handle = info["handle"]
    before = runtime.stats()["scheduler"]
    assert before["background_paused"] and before["background_remaining"] == info["last_index"] - info["first_index"] + 1
    forecast = client.get(f"/datasets/{handle}/forecasts/{info['last_index']}").json()
    # The backlog waits while the click on its last index is computed at once.
    assert forecast["source"] == "interactive"
    during = runtime.stats()["scheduler"]
    assert during["background_remaining"] == before["background_remaining"]
    assert during["computed_background"] == before["computed_background"]
    assert during["computed_interactive"] - before["computed_interactive"] == 1
    assert during["promoted"] - before["promoted"] == 1

    assert hold_background(client, False)["remaining"] == before["background_remaining"]
    wait_for(lambda: runtime.stats()["scheduler"]["computed_background"] > before["computed_background"],
             what="some background work")
    assert client.delete(f"/datasets/{handle}").status_code == 200
    at_delete = runtime.stats()["scheduler"]
    assert at_delete["background_remaining"] == 0 and at_delete["datasets"] == 0
    wait_for(lambda: runtime.stats()["scheduler"]["in_flight"] == 0, what="the in-flight chunk to end")
    # A full round trip through the device: had the deleted dataset's work gone on, the
    # worker would have picked it up before going idle for this.
    assert client.post("/quick-draw", content=generated_csv(30, seed=18), headers=CSV).status_code == 200
    after = runtime.stats()["scheduler"]
    assert after["computed_background"] == at_delete["computed_background"]
    assert runtime.stats()["result_cache"]["entries"] == 0


def test_a_range_waits_for_the_background_lane_and_a_click_still_comes_first(client: httpx.Client,
                                                                              runtime: RuntimeProcess) -> None:
    info = upload(client, generated_csv(260, seed=19))  # no precompute: the range asks for its indices
    handle, first, last = info["handle"], info["first_index"], info["last_index"]
    model_version = client.get("/health").json()["model_version"]
    before = runtime.stats()["scheduler"]
    hold_background(client, True)

    async def scenario() -> tuple[dict, dict, httpx.Response]:
        async with httpx.AsyncClient(base_url=runtime.url, timeout=60) as http:
            ranged = asyncio.create_task(http.get(f"/datasets/{handle}/forecasts",
                                                  params={"start": first, "stop": last + 1, "wait": 60}))
            # Click once the range is registered (all its indices awaited) on a held lane.
            while not ranged.done() and (await http.get("/stats")).json()["scheduler"]["awaited"] < last + 1 - first:
                await asyncio.sleep(0.01)
            click = (await http.get(f"/datasets/{handle}/forecasts/{last}")).json()
            at_click = (await http.get("/stats")).json()["scheduler"]
            assert not ranged.done()
            assert (await http.put("/forecasts/background", json={"paused": False})).status_code == 200
            return click, at_click, await ranged

    click, at_click, response = asyncio.run(scenario())
    # The click on the range's last index was answered while the range waited, took that
    # index over from it (one future per index), and nothing of the range was computed yet.
    assert click["source"] == "interactive"
    assert at_click["awaited"] == last - first and at_click["computed_background"] == before["computed_background"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["handle"], body["start"], body["stop"], body["model_version"]) == (handle, first, last + 1, model_version)
    assert body["levels"] == [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95] and body["horizon"] == 6
    forecasts = body["forecasts"]
    assert [f["index"] for f in forecasts] == list(range(first, last + 1))
    assert [f["lane"] for f in forecasts] == ["background"] * (len(forecasts) - 1) + ["interactive"]
    assert forecasts[-1]["series"][0]["mean"] == click["series"][0]["mean"]
    for forecast in forecasts:
        quantiles = forecast["series"][0]["quantiles"]
        assert all(low <= high for a, b in itertools.pairwise(quantiles) for low, high in zip(a, b, strict=False))
    after = runtime.stats()["scheduler"]
    assert after["computed_background"] - before["computed_background"] == len(forecasts) - 1
    assert after["computed_interactive"] - before["computed_interactive"] == 1
    assert after["awaited"] == 0 and after["background_remaining"] == before["background_remaining"]

    # Asked again: everything is cached, nothing is computed.
    again = client.get(f"/datasets/{handle}/forecasts", params={"start": first, "stop": first + 10}).json()
    assert again["forecasts"] == forecasts[:10]
    assert runtime.stats()["scheduler"]["computed_background"] == after["computed_background"]
    client.delete(f"/datasets/{handle}")


def test_range_errors_timeouts_and_deletes_have_the_one_shape(client: httpx.Client, runtime: RuntimeProcess) -> None:
    handle = upload(client, generated_csv(300, seed=20))["handle"]
    path = f"/datasets/{handle}/forecasts"
    assert_error(client.get(path, params={"start": 20, "stop": 20}), 422, "invalid_range", "start < stop")
    assert_error(client.get(path, params={"start": 7, "stop": 264}), 422, "invalid_range", "at most 256",
                 "runtime.max_range_indices")
    assert_error(client.get(path, params={"start": 250, "stop": 301}), 422, "index_out_of_range", "7..299")
    assert_error(client.get(path, params={"start": 7, "stop": 9, "wait": 0}), 400, "invalid_request")
    assert_error(client.get("/datasets/nope/forecasts", params={"start": 7, "stop": 9}), 404, "dataset_not_found")

    hold_background(client, True)
    body = assert_error(client.get(path, params={"start": 7, "stop": 207, "wait": 0.001}), 504, "timeout",
                        "were not computed within 0.001s", "ask again")
    assert body["details"]["total"] == 200 and body["details"]["ready"] == 0
    # The work a timed-out range asked for goes on; asking again collects it.
    hold_background(client, False)
    wait_for(lambda: runtime.stats()["scheduler"]["awaited"] == 0, what="the timed-out range's work")
    assert len(client.get(path, params={"start": 7, "stop": 207}).json()["forecasts"]) == 200

    async def delete_while_waiting() -> httpx.Response:
        async with httpx.AsyncClient(base_url=runtime.url, timeout=60) as http:
            ranged = asyncio.create_task(http.get(path, params={"start": 207, "stop": 300, "wait": 60}))
            while not ranged.done() and (await http.get("/stats")).json()["scheduler"]["awaited"] < 93:
                await asyncio.sleep(0.01)
            assert (await http.delete(f"/datasets/{handle}")).status_code == 200
            return await ranged

    hold_background(client, True)  # the range cannot finish before the delete
    assert_error(asyncio.run(delete_while_waiting()), 404, "dataset_gone", "was deleted while this request waited")
    assert runtime.stats()["scheduler"]["awaited"] == 0
    hold_background(client, False)


def test_the_background_lane_refuses_a_body_without_paused(client: httpx.Client) -> None:
    assert_error(client.put("/forecasts/background", json={}), 400, "invalid_request", "paused")
    assert_error(client.put("/forecasts/background", json={"paused": "soon"}), 400, "invalid_request")
    assert client.get("/stats").json()["scheduler"]["background_paused"] is False
