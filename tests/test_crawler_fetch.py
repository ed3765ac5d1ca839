"""The crawler's HTTP client against misbehaving loopback hosts: retries, redirects, caps, truncation."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.crawler.fetch import (
    DEFAULT_USER_AGENT,
    FetchConfig,
    FetchError,
    Fetcher,
    Transcript,
    parse_content_range,
    retry_after_seconds,
)
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.politeness import HostGate, PolitenessConfig
from tests.crawler_fakes import LOG, file_host

FAST = FetchConfig(honour_robots=False, backoff_base=0.01, backoff_max=0.05)
LOOPBACK = AddressPolicy(allow_loopback=True)


def fetcher(config: FetchConfig = FAST, **politeness: float) -> Fetcher:
    return Fetcher(config, gate=HostGate(PolitenessConfig(**politeness)), address_policy=LOOPBACK)


async def test_retries_5xx_with_backoff_then_succeeds_and_records_every_attempt(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    transcript = Transcript()
    async with fetcher() as client:
        response, body = await client.get_small(server.make_url("/flaky/a?fails=2"), transcript=transcript)
    assert (response.status, body) == (200, b"ok")
    assert [e.status for e in transcript.exchanges] == [503, 503, 200]
    assert server.app[LOG].hits["/flaky/a"] == 3


async def test_gives_up_after_the_retry_budget_with_the_last_status(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    transcript = Transcript()
    async with fetcher() as client:
        response, _ = await client.get_small(server.make_url("/flaky/b?status=502"), transcript=transcript)
    assert response.status == 502
    assert server.app[LOG].hits["/flaky/b"] == FAST.max_retries + 1


def gap(transcript: Transcript) -> float:
    """Seconds between the starts of the first two requests (client side)."""
    first, second = (datetime.fromisoformat(e.started_at.replace("Z", "+00:00")) for e in transcript.exchanges[:2])
    return (second - first).total_seconds()


async def test_429_retry_after_pauses_the_host_for_at_least_that_long(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    transcript = Transcript()
    async with fetcher() as client:
        response, body = await client.get_small(server.make_url("/flaky/c?fails=1&status=429&retry_after=1"), transcript=transcript)
    assert (response.status, body) == (200, b"ok")
    assert [e.status for e in transcript.exchanges] == [429, 200]
    assert gap(transcript) >= 0.999
    assert server.app[LOG].hits["/flaky/c"] == 2


async def test_retry_after_as_http_date_is_honoured(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)  # whole seconds: 1–2 s from now
    transcript = Transcript()
    async with fetcher() as client:
        response, _ = await client.get_small(
            server.make_url("/flaky/d").with_query(fails=1, status=503, retry_after=when), transcript=transcript
        )
    assert response.status == 200
    assert gap(transcript) >= 0.9


async def test_a_retry_after_beyond_our_patience_fails_at_once(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    async with fetcher(max_retry_after=5) as client:
        with pytest.raises(FetchError, match="asks to wait 3600"):
            await client.get_small(server.make_url("/flaky/e?status=429&retry_after=3600"), transcript=Transcript())
    assert server.app[LOG].hits["/flaky/e"] == 1


async def test_redirect_loops_stop_at_the_limit(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    transcript = Transcript()
    async with fetcher() as client:
        with pytest.raises(FetchError, match="more than 5 redirects"):
            await client.get_small(server.make_url("/loop"), transcript=transcript)
    assert server.app[LOG].hits["/loop"] == 6
    assert len(transcript.exchanges) == 6 and all(e.status == 302 for e in transcript.exchanges)


async def test_redirects_are_followed_by_hand_and_303_turns_into_get(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    transcript = Transcript()
    async with fetcher() as client:
        async with client.open(
            server.make_url("/to").with_query(target="/echo", status="303"), method="POST", transcript=transcript
        ) as response:
            assert await response.read(100) == b"GET"
            assert response.url.path == "/echo"
    assert [(e.method, e.status) for e in transcript.exchanges] == [("POST", 303), ("GET", 200)]
    assert transcript.exchanges[0].headers["location"] == "/echo"


async def test_a_lying_content_length_is_reported_as_truncated(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": b"x" * 5000}))
    async with fetcher() as client:
        with pytest.raises(FetchError, match="truncated"):
            await client.get_small(server.make_url("/lying/m"), transcript=Transcript())


async def test_size_caps_refuse_declared_and_undeclared_oversize_bodies(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": b"x" * 5000}))
    async with fetcher() as client:
        with pytest.raises(FetchError, match="exceeds the cap of 100"):
            await client.get_small(server.make_url("/files/m"), transcript=Transcript(), limit=100)
        transcript = Transcript()
        with pytest.raises(FetchError, match="exceeds the cap of 100000"):
            await client.get_small(server.make_url("/big?size=10000000"), transcript=transcript, limit=100_000)
    assert transcript.bytes_read < 10_000_000  # stopped reading soon after the cap


async def test_a_stalled_body_times_out(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    config = FetchConfig(honour_robots=False, read_timeout=0.2, max_retries=0)
    async with fetcher(config) as client:
        with pytest.raises(FetchError, match="timed out"):
            await client.get_small(server.make_url("/slow?seconds=5"), transcript=Transcript())


async def drip_handler(request: web.Request) -> web.StreamResponse:
    """A 10,000-byte body sent one byte every 20 ms: never silent long enough for the read timeout."""
    response = web.StreamResponse(headers={"Content-Length": "10000"})
    await response.prepare(request)
    for _ in range(10_000):
        await response.write(b"x")
        await asyncio.sleep(0.02)
    return response


@pytest.mark.parametrize("reader", ["read", "chunks"])
async def test_a_host_dripping_bytes_is_cut_off_after_the_grace_time(aiohttp_server, reader: str) -> None:
    """Before, a host sending a byte just inside every read timeout held the request (and its
    slot) for the whole 600 s request timeout."""
    app = web.Application()
    app.router.add_get("/drip", drip_handler)
    server = await aiohttp_server(app)
    config = FetchConfig(honour_robots=False, max_retries=0, read_timeout=5, min_bytes_per_second=1000, rate_grace_seconds=0.3)
    started = asyncio.get_running_loop().time()
    async with fetcher(config) as client:
        async with client.open(server.make_url("/drip"), transcript=Transcript()) as response:
            with pytest.raises(FetchError, match=r"slower than 1000 bytes a second: not read further"):
                if reader == "read":
                    await response.read(100_000)
                else:
                    async for _chunk in response.chunks():
                        pass
    assert asyncio.get_running_loop().time() - started < 4


async def test_a_body_at_a_steady_pace_is_read_whole(aiohttp_server) -> None:
    app = web.Application()
    app.router.add_get("/drip", drip_handler)
    server = await aiohttp_server(app)
    config = FetchConfig(honour_robots=False, max_retries=0, min_bytes_per_second=10, rate_grace_seconds=0.1)
    async with fetcher(config) as client, client.open(server.make_url("/drip"), transcript=Transcript()) as response:
        received = 0
        async for chunk in response.chunks():
            received += len(chunk)
            if received >= 100:  # 100 bytes at 50 a second, above the 10 a second floor
                break
    assert received >= 100


async def test_a_refused_connection_fails_after_bounded_retries() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with fetcher() as client:
        with pytest.raises(FetchError, match=f"after {FAST.max_retries + 1} attempts"):
            await client.get_small(f"http://127.0.0.1:{port}/", transcript=Transcript())


async def test_requests_say_who_we_are_and_ask_for_identity_encoding(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": b"abc"}))
    transcript = Transcript()
    async with fetcher() as client:
        await client.get_small(server.make_url("/files/m"), transcript=transcript)
    assert server.app[LOG].user_agents == {DEFAULT_USER_AGENT}
    (exchange,) = transcript.exchanges
    assert exchange.bytes_read == 3 and exchange.headers["content-length"] == "3"
    assert exchange.started_at.endswith("Z")


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_retry_after_parsing_never_crashes_and_is_never_negative(value: str) -> None:
    seconds = retry_after_seconds(value)
    assert seconds is None or seconds >= 0


@given(st.integers(0, 2**62), st.integers(0, 2**62), st.one_of(st.none(), st.integers(0, 2**62)))
@settings(max_examples=300, deadline=None)
def test_content_range_accepts_only_consistent_ranges(first: int, last: int, total: int | None) -> None:
    text = f"bytes {first}-{last}/{'*' if total is None else total}"
    consistent = first <= last and (total is None or last < total)
    if consistent:
        assert parse_content_range(text) == (first, last, total)
    else:
        with pytest.raises(FetchError):
            parse_content_range(text)


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_content_range_junk_is_a_fetch_error(value: str) -> None:
    try:
        first, last, total = parse_content_range(value)
    except FetchError:
        return
    assert first <= last and (total is None or last < total)


@pytest.mark.parametrize(
    "value",
    ["bytes 0-1/" + "9" * 5000, "bytes " + "1" * 4400 + "-" + "2" * 4400 + "/*", "bytes \uff10-\uff11/\uff12", "bytes 0-1/\u0663\u0663"],
)
def test_content_range_takes_only_ascii_numbers_of_sane_length(value: str) -> None:
    """A 5,000-digit number made int() raise a bare ValueError (an 'unexpected' error); other scripts' digits parsed."""
    with pytest.raises(FetchError):
        parse_content_range(value)


async def test_an_answer_that_breaks_http_is_not_asked_for_again() -> None:
    """A malformed answer is the host's nature, not a dropped connection: retrying it only sent the
    hostile host the same request again, `retries` times, with backoff."""
    served = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"X-Junk: y\r\n" * 200 + b"\r\nok")  # past aiohttp's header count
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server, fetcher() as client:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(FetchError, match="headers") as refused:
            await client.get_small(f"http://127.0.0.1:{port}/", transcript=Transcript())
    assert served == [1] and "attempts" not in str(refused.value)
