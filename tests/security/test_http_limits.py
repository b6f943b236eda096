"""HTTP input limits, over real HTTP to the app served by uvicorn as ``carebridge serve`` does.

A hostile Cookie header must not hold the event loop (CVE-2024-7592 in http.cookies), and
an anonymous client must not make the server buffer a large body: both are refused before
Starlette, the session cookie code or the API key check sees the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.serve import WebPart
from gateway.services import Services
from gateway.web.limits import CookieRefused, parse_cookies

BACKSLASH_COOKIE = 'a="' + "\\" * 15_000


@pytest.fixture
async def base_url(services: Services) -> AsyncIterator[str]:
    part = WebPart(services)
    await part.start()
    try:
        yield f"http://127.0.0.1:{part.port}"
    finally:
        await part.stop()


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def raw_request(base_url: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request over a plain socket (so nothing on the client side fixes it up)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head.encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=30)
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line, "no answer"
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_backslash_cookies_are_refused_and_healthz_stays_fast(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

        async def hostile() -> httpx.Response:
            return await client.get("/portal/login", headers={"cookie": BACKSLASH_COOKIE})

        async def poll_health(stop: asyncio.Event) -> list[float]:
            times = []
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as probe:
                while not stop.is_set():
                    started = time.perf_counter()
                    assert (await probe.get("/healthz")).status_code == 200
                    times.append(time.perf_counter() - started)
                    await asyncio.sleep(0.01)
            return times

        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(stop))
        answers = await asyncio.gather(*(hostile() for _ in range(20)))
        await asyncio.sleep(0.05)
        stop.set()
        times = await poller
    assert [r.status_code for r in answers] == [400] * 20
    assert answers[0].headers["content-type"] == "application/problem+json"
    assert answers[0].json()["type"].endswith("/bad-cookie")
    assert "\\\\" not in answers[0].text  # the value is never echoed
    # Unpatched, one such request held the loop for over a second; generous bound.
    assert times and max(times) < 1.0, max(times)


def test_cookie_parse_is_linear_and_keeps_ordinary_cookies() -> None:
    started = time.perf_counter()
    for hostile in (
        BACKSLASH_COOKIE,
        'a="' + '\\"' * 5000,
        'a="x' + "\\" * 8 + "y",
        'a=b"c',
        "; ".join(f"c{i}=v" for i in range(51)),
    ):
        with pytest.raises(CookieRefused):
            parse_cookies(hostile)
    assert time.perf_counter() - started < 0.5
    assert parse_cookies('cb_session=abc.def; cb_lang=es; q="a\\"b"; bad name=x') == {
        "cb_session": "abc.def",
        "cb_lang": "es",
        "q": 'a"b',
    }


async def test_an_anonymous_5mb_json_post_is_413_before_it_is_read(base_url: str) -> None:
    size = 5 * 1024 * 1024
    body = b'{"x": "' + b"a" * (size - 10) + b'"}'
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        # Under the limit the request reaches the API and its key check.
        small = await client.post("/api/v1/patients", json={"x": "a" * 500_000})
        assert small.status_code == 401
        before = rss_kb()
        for _ in range(3):
            r = await client.post(
                "/api/v1/patients", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 413
            assert r.headers["content-type"] == "application/problem+json"
            problem = r.json()
            assert problem["status"] == 413 and problem["type"].endswith("/too-large")
            assert str(1024 * 1024) in problem["detail"]
    # The test's own 5 MB body is allocated before the baseline; the server reads none of it.
    grown_mb = (rss_kb() - before) / 1024
    assert grown_mb < 4, f"RSS grew {grown_mb:.1f} MB"


async def test_a_declared_length_over_the_limit_is_refused_without_reading_the_body(
    base_url: str,
) -> None:
    status, body = await raw_request(
        base_url,
        "POST /api/v1/patients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 200000000",
    )
    assert status == 413
    assert json.loads(body)["status"] == 413


async def test_chunked_bodies_are_counted_and_cut_off(base_url: str) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        piece = b"a" * 65536
        for _ in range(80):  # 5 MB, no Content-Length: chunked
            sent += len(piece)
            yield piece

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        before = rss_kb()
        try:
            r = await client.post(
                "/api/v1/patients", content=chunks(), headers={"content-type": "application/json"}
            )
        except (httpx.RemoteProtocolError, httpx.WriteError):
            pytest.fail("the server must answer 413, not drop the connection")
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        # A form route has its own (smaller) cap, counted the same way.
        form = await client.post(
            "/portal/login",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 413
    assert (rss_kb() - before) / 1024 < 4


async def test_too_many_or_too_large_headers_are_refused(base_url: str) -> None:
    many = "\r\n".join(f"X-H{i}: v" for i in range(150))
    status, _ = await raw_request(base_url, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{many}")
    assert status == 431
    big = "\r\n".join(f"X-H{i}: {'v' * 4000}" for i in range(5))
    status, _ = await raw_request(base_url, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{big}")
    assert status == 431
    # Beyond what h11 buffers at all: refused by the server before the app.
    huge = "\r\n".join(f"X-H{i}: {'v' * 8000}" for i in range(8))
    status, _ = await raw_request(base_url, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{huge}")
    assert status in (400, 431)
    status, _ = await raw_request(base_url, "GET /healthz HTTP/1.1\r\nHost: x")
    assert status == 200
