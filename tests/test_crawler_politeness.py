"""Politeness against a loopback host that records concurrency per Host header; robots.txt rules."""

from __future__ import annotations

import asyncio
from datetime import datetime

import urllib.robotparser

import pytest
from yarl import URL
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.crawler.fetch import FetchConfig, Fetcher, RobotsDisallowedError, Transcript
from modelsieve.crawler.netguard import AddressPolicy, BlockedAddressError
from modelsieve.crawler.politeness import HostGate, PolitenessConfig, RobotsRules, deciding_rule, parse_robots
from tests.crawler_fakes import LOG, file_host

LOOPBACK = AddressPolicy(allow_loopback=True)
HOSTS = {f"h{i}.test": ["127.0.0.1"] for i in range(4)} | {"private.test": ["10.0.0.1"]}


async def resolve_hosts(host: str, port: int) -> list[str]:
    return HOSTS[host]


def fetcher(config: FetchConfig = FetchConfig(honour_robots=False), **politeness: float) -> Fetcher:
    return Fetcher(config, gate=HostGate(PolitenessConfig(**politeness)), address_policy=LOOPBACK, resolve=resolve_hosts)


async def get_all(client: Fetcher, urls: list[str], transcript: Transcript | None = None) -> list[int]:
    async def one(url: str) -> int:
        response, _ = await client.get_small(url, transcript=transcript or Transcript())
        return response.status

    return await asyncio.gather(*(one(u) for u in urls))


def start_times(transcript: Transcript) -> list[float]:
    """When each request was sent (client side: server arrival times shift under load)."""
    return sorted(datetime.fromisoformat(e.started_at.replace("Z", "+00:00")).timestamp() for e in transcript.exchanges)


async def test_no_host_sees_more_than_its_concurrency_limit(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": b"abc"}, delay=0.05))
    urls = [f"http://h{i % 4}.test:{server.port}/files/m" for i in range(48)]
    async with fetcher(per_host_concurrency=2, global_concurrency=64) as client:
        assert set(await get_all(client, urls)) == {200}
    log = server.app[LOG]
    assert set(log.max_in_flight) == {f"h{i}.test" for i in range(4)}
    assert max(log.max_in_flight.values()) == 2  # the limit holds, and was reached
    assert log.max_total_in_flight > 2  # hosts do not wait for one another


async def test_the_global_limit_caps_all_hosts_together(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": b"abc"}, delay=0.05))
    urls = [f"http://h{i % 4}.test:{server.port}/files/m" for i in range(40)]
    async with fetcher(per_host_concurrency=4, global_concurrency=3) as client:
        await get_all(client, urls)
    assert server.app[LOG].max_total_in_flight == 3


async def test_requests_to_one_host_are_spaced_by_the_delay(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": b"abc"}))
    urls = [f"http://h0.test:{server.port}/files/m"] * 4
    transcript = Transcript()
    async with fetcher(per_host_concurrency=4, per_host_delay=0.15) as client:
        await get_all(client, urls, transcript)
    assert len(server.app[LOG].starts["h0.test"]) == 4
    starts = start_times(transcript)
    assert len(starts) == 4
    assert all(later - earlier >= 0.149 for earlier, later in zip(starts, starts[1:]))


ROBOTS = "User-agent: *\nDisallow: /files/secret\n\nUser-agent: modelsieve\nDisallow: /files/private\n"


async def test_robots_txt_is_honoured_and_fetched_once_per_origin(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"m": b"abc", "private": b"no"}, robots=(200, ROBOTS)))
    allowed, refused = Transcript(), Transcript()
    async with fetcher(FetchConfig()) as client:
        assert await get_all(client, [f"http://h0.test:{server.port}/files/m"] * 5, allowed) == [200] * 5
        with pytest.raises(RobotsDisallowedError, match=r"robots.txt disallows .*\(Disallow: /files/private\)"):
            await client.get_small(f"http://h0.test:{server.port}/files/private", transcript=refused)
    robots_url = f"http://h0.test:{server.port}/robots.txt"
    # The evidence says which robots.txt decided, with its status and the deciding rule (once per URL).
    assert [(v.robots_url, v.status, v.url, v.allowed, v.rule) for v in allowed.robots] == [
        (robots_url, 200, f"http://h0.test:{server.port}/files/m", True, "no rule matches: allowed")
    ]
    (verdict,) = refused.robots
    assert verdict.to_json() == {
        "robots_url": robots_url,
        "status": 200,
        "fetched_at": allowed.robots[0].fetched_at,  # one fetch per origin, shared by every verdict
        "url": f"http://h0.test:{server.port}/files/private",
        "allowed": False,
        "rule": "Disallow: /files/private",  # the modelsieve group, not the * group
    }
    assert refused.exchanges == []  # nothing was requested
    log = server.app[LOG]
    assert log.hits["/robots.txt"] == 1
    assert log.hits["/files/private"] == 0


async def test_robots_rules_are_checked_again_after_a_redirect(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"private": b"no"}, robots=(200, ROBOTS)))
    async with fetcher(FetchConfig()) as client:
        with pytest.raises(RobotsDisallowedError):
            await client.get_small(f"http://h1.test:{server.port}/to?target=/files/private", transcript=Transcript())
    assert server.app[LOG].hits["/files/private"] == 0


@pytest.mark.parametrize(("status", "allowed"), [(404, True), (410, True), (429, False), (500, False), (503, False)])
async def test_robots_status_codes_follow_rfc_9309(aiohttp_server, status: int, allowed: bool) -> None:
    server = await aiohttp_server(file_host({"m": b"abc"}, robots=(status, "User-agent: *\nAllow: /\n")))
    config = FetchConfig(backoff_base=0.01, max_retries=1)
    transcript = Transcript()
    async with fetcher(config) as client:
        if allowed:
            response, _ = await client.get_small(f"http://h2.test:{server.port}/files/m", transcript=transcript)
            assert response.status == 200
        else:
            with pytest.raises(RobotsDisallowedError, match=f"status {status}: nothing allowed"):
                await client.get_small(f"http://h2.test:{server.port}/files/m", transcript=transcript)
            assert server.app[LOG].hits["/files/m"] == 0
    (verdict,) = transcript.robots
    assert (verdict.status, verdict.allowed) == (status, allowed)
    assert verdict.rule.startswith(f"no robots.txt (status {status})" if allowed else f"robots.txt answered status {status}")


async def test_an_unreachable_robots_txt_is_evidence_too(unused_tcp_port: int) -> None:
    transcript = Transcript()
    async with fetcher(FetchConfig(backoff_base=0.01, max_retries=0)) as client:
        with pytest.raises(RobotsDisallowedError, match="unreachable"):
            await client.get_small(f"http://h3.test:{unused_tcp_port}/files/m", transcript=transcript)
    (verdict,) = transcript.robots
    assert verdict.status is None and not verdict.allowed and verdict.rule.startswith("robots.txt unreachable (")


async def test_robots_can_be_switched_off(aiohttp_server) -> None:
    server = await aiohttp_server(file_host({"private": b"no"}, robots=(200, ROBOTS)))
    async with fetcher(FetchConfig(honour_robots=False)) as client:
        response, body = await client.get_small(f"http://h3.test:{server.port}/files/private", transcript=Transcript())
    assert (response.status, body) == (200, b"no")
    assert server.app[LOG].hits["/robots.txt"] == 0


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PolitenessConfig(per_host_concurrency=0)
    with pytest.raises(ValueError):
        PolitenessConfig(per_host_delay=-1)


async def test_a_blocked_host_is_reported_as_blocked_not_as_robots_disallowed() -> None:
    async with fetcher(FetchConfig()) as client:
        with pytest.raises(BlockedAddressError, match="10.0.0.1"):
            await client.get_small("http://private.test/files/m", transcript=Transcript())


_ROBOTS_LINE = st.one_of(
    st.tuples(st.sampled_from(["User-agent", "user-agent", "Allow", "Disallow", "Crawl-delay", "Sitemap", "junk"]),
              st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)).map(lambda pair: f"{pair[0]}: {pair[1]}"),
    st.sampled_from(["", "# comment", "User-agent: *", "User-agent: modelsieve", "Disallow: /", "Allow: /a", "Disallow: //[", "Allow: %2F%2F%5Bx"]),
    st.text(max_size=30),
)


def test_non_ascii_digits_in_unused_fields_do_not_crash_the_parser() -> None:
    with pytest.raises(ValueError):  # the standard parser alone crashes on this file
        urllib.robotparser.RobotFileParser().parse(["User-agent: *", "Crawl-delay: \u00b9", "Disallow: /x"])
    parser = parse_robots("User-agent: *\nCrawl-delay: \u00b9\nRequest-rate: \u00b9/\u00b2\nDisallow: /x\n")
    assert not parser.can_fetch("modelsieve", "http://h.test/x/file")
    assert parser.can_fetch("modelsieve", "http://h.test/y")


def test_a_rule_the_standard_parser_cannot_parse_is_dropped_not_fatal() -> None:
    """urlparse refuses "//[" (an unclosed IPv6 host): parse() raised, and every URL of the site became
    an 'unexpected ValueError' error instead of following the rest of its robots.txt."""
    parser = parse_robots("User-agent: *\nDisallow: //[\nAllow: %2F%2F%5Bx # encoded\nDisallow: /private/\n")
    assert not parser.can_fetch("modelsieve", "http://h.test/private/m.safetensors")
    assert parser.can_fetch("modelsieve", "http://h.test/public/m.safetensors")
    assert deciding_rule(parser, "modelsieve", "http://h.test/private/m.safetensors") == "Disallow: /private/"


@settings(max_examples=300, deadline=None)
@given(st.lists(_ROBOTS_LINE, max_size=20), st.text(max_size=30))
def test_the_deciding_rule_agrees_with_the_parser_on_hostile_robots_txt(lines: list[str], path: str) -> None:
    parser = parse_robots("\n".join(lines))  # never raises, whatever the lines
    url = "http://h.test/" + path
    try:
        allowed = parser.can_fetch("modelsieve", url)
    except ValueError:  # the standard parser refuses some hostile URLs itself; the crawler's are yarl-normalised
        return
    rule = deciding_rule(parser, "modelsieve", url)
    if rule is None:
        assert allowed
    else:
        assert rule.split(":", 1)[0] == ("Allow" if allowed else "Disallow")


async def test_a_request_cancelled_while_waiting_for_a_slot_gives_nothing_away() -> None:
    gate = HostGate(PolitenessConfig(per_host_concurrency=1, global_concurrency=1))
    first = await gate.admit("h0.test")
    waiting = asyncio.ensure_future(gate.admit("h0.test"))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the host's one slot is taken
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    first.release()
    first.release()  # idempotent: a second release must not free a slot it does not hold
    held = await asyncio.wait_for(gate.admit("h1.test"), 5)  # the global slot came back
    blocked = asyncio.ensure_future(gate.admit("h0.test"))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # and only one: the global limit of 1 still holds
    held.release()
    (await asyncio.wait_for(blocked, 5)).release()


async def test_the_robots_cache_is_bounded_by_the_bytes_it_parsed_not_only_by_origins() -> None:
    """A parsed 512 KiB robots.txt takes about 4.5 MB in Python objects, and 50,000 origins were kept:
    a site with many subdomains, each serving a big robots.txt, could make the crawler hold 100+ GB."""
    big = "User-agent: *\n" + "".join(f"Disallow: /private{i}/\n" for i in range(3000))  # ~70 KB

    async def fetch(url: URL) -> tuple[int, str]:
        return 200, big

    rules = RobotsRules(fetch, "modelsieve", max_cached_bytes=300_000)
    for i in range(40):
        verdict = await rules.verdict(URL(f"http://sub{i}.spam.test/private7/x"))
        assert not verdict.allowed and verdict.rule == "Disallow: /private7/"
        origins, cached = rules.cache_size()
        assert cached <= 300_000 + len(big) and origins <= 5
    assert (await rules.verdict(URL("http://sub0.spam.test/open/x"))).allowed  # evicted, fetched again, still right
    await rules.close()
