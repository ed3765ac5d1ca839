"""SSRF guard: address classes, URL checks, and refusals end to end through a real Fetcher.

Names resolve through stubbed resolvers; the only packets sent go to the loopback test server.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from modelsieve.crawler.fetch import FetchConfig, Fetcher, Transcript
from modelsieve.crawler.netguard import (
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    check_url,
    refusal_reason,
    vet_addresses,
)
from tests.crawler_fakes import LOG, file_host

STRICT = AddressPolicy()
LOOPBACK_OK = AddressPolicy(allow_loopback=True)

REFUSED = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "127.8.9.10",
    "0.0.0.0",
    "169.254.169.254",  # cloud metadata
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "100.64.0.1",  # carrier-grade NAT
    "192.0.0.8",
    "198.18.0.1",
    "192.0.2.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:10.0.0.1",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::10.0.0.1",  # IPv4-compatible (deprecated)
    "2002:a00:1::1",  # 6to4 around 10.0.0.1
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
    "64:ff9b:1::c0a8:101",  # local-use NAT64 around 192.168.1.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "2a00:1450:4001:80b::200e", "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), STRICT) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), STRICT) is None


def test_allowing_loopback_allows_only_loopback() -> None:
    assert refusal_reason(ipaddress.ip_address("127.0.0.1"), LOOPBACK_OK) is None
    assert refusal_reason(ipaddress.ip_address("::1"), LOOPBACK_OK) is None
    for address in ("10.0.0.1", "169.254.169.254", "fe80::1", "::ffff:10.0.0.1", "0.0.0.0"):
        assert refusal_reason(ipaddress.ip_address(address), LOOPBACK_OK) is not None


PRIVATE_V4 = st.one_of(
    st.integers(int(ipaddress.IPv4Address("10.0.0.0")), int(ipaddress.IPv4Address("10.255.255.255"))),
    st.integers(int(ipaddress.IPv4Address("127.0.0.0")), int(ipaddress.IPv4Address("127.255.255.255"))),
    st.integers(int(ipaddress.IPv4Address("169.254.0.0")), int(ipaddress.IPv4Address("169.254.255.255"))),
    st.integers(int(ipaddress.IPv4Address("192.168.0.0")), int(ipaddress.IPv4Address("192.168.255.255"))),
    st.integers(int(ipaddress.IPv4Address("172.16.0.0")), int(ipaddress.IPv4Address("172.31.255.255"))),
).map(ipaddress.IPv4Address)


@given(PRIVATE_V4, st.sampled_from(["mapped", "6to4", "nat64", "compatible"]))
@settings(max_examples=200, deadline=None)
def test_every_embedding_of_a_private_ipv4_is_refused(inner: ipaddress.IPv4Address, form: str) -> None:
    value = int(inner)
    wrapped = {
        "mapped": ipaddress.IPv6Address((0xFFFF << 32) | value),
        "6to4": ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | 1),
        "nat64": ipaddress.IPv6Address((0x0064FF9B << 96) | value),
        "compatible": ipaddress.IPv6Address(value),
    }[form]
    assert refusal_reason(wrapped, STRICT) is not None
    assert refusal_reason(wrapped, LOOPBACK_OK) is not None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/model.safetensors",
        "gopher://example.org/",
        "http:///nohost",
        "http://user:secret@example.org/model.safetensors",
        "http://10.0.0.1/model.safetensors",
        "http://[::ffff:a00:1]/model.safetensors",
        "http://[fe80::1%25eth0]/",
        "https://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:8080/",
    ],
)
def test_check_url_refuses_schemes_credentials_and_private_literals(url: str) -> None:
    with pytest.raises(BlockedAddressError):
        check_url(URL(url), LOOPBACK_OK)


@pytest.mark.parametrize(
    "url", ["http://2130706433/", "http://127.1/", "http://0177.0.0.1/", "http://017700000001/", "http://0/", "http://127.0.0.1./", "http://8.8.8.8./", "http://[v1.fe80::a+en1]/"]
)
def test_check_url_refuses_hosts_a_socket_would_read_as_addresses_in_other_spellings(url: str) -> None:
    """aiohttp 3.10-3.13 (allowed by our requirement) sends all-digit hosts straight to the socket, which
    reads 2130706433, 127.1 and 0177.0.0.1 as 127.0.0.1: no resolver, so no vetting, would see them."""
    with pytest.raises(BlockedAddressError, match="not a canonical IP address"):
        check_url(URL(url), LOOPBACK_OK)


def test_check_url_passes_names_and_public_literals() -> None:
    for url in ("https://huggingface.co/x/y/resolve/main/m.safetensors", "http://8.8.8.8/", "http://[2606:4700::1111]/"):
        check_url(URL(url), STRICT)



def test_check_url_vets_the_host_as_sent_and_caches_no_decision() -> None:
    with pytest.raises(BlockedAddressError, match="10.0.0.1"):  # full-width digits are sent as 10.0.0.1
        check_url(URL("http://\uff11\uff10.\uff10.\uff10.\uff11/"), LOOPBACK_OK)
    check_url(URL("http://b\u00fccher.example/m.safetensors"), STRICT)  # an IDN name: sent punycoded, resolved later
    loopback = URL("http://127.0.0.1/m.safetensors")
    check_url(loopback, LOOPBACK_OK)
    with pytest.raises(BlockedAddressError, match="loopback"):  # the parsed address is cached, never the verdict
        check_url(loopback, STRICT)

def test_a_name_with_any_private_address_is_refused_whole() -> None:
    with pytest.raises(BlockedAddressError, match="10.0.0.7"):
        vet_addresses("mixed.test", ["93.184.216.34", "10.0.0.7"], STRICT)
    with pytest.raises(BlockedAddressError, match="no address"):
        vet_addresses("empty.test", [], STRICT)
    with pytest.raises(BlockedAddressError, match="not an IP"):
        vet_addresses("junk.test", ["not-an-ip"], STRICT)


async def test_guarded_resolver_returns_only_vetted_addresses_pinned_to_the_name() -> None:
    async def stub(host: str, port: int) -> list[str]:
        return {"hub.test": ["127.0.0.1", "::1"], "evil.test": ["127.0.0.1", "192.168.0.10"]}[host]

    resolver = GuardedResolver(LOOPBACK_OK, stub)
    results = await resolver.resolve("hub.test", 443)
    assert [(r["hostname"], r["host"], r["port"]) for r in results] == [("hub.test", "127.0.0.1", 443), ("hub.test", "::1", 443)]
    with pytest.raises(BlockedAddressError, match="192.168.0.10"):
        await resolver.resolve("evil.test", 443)


def stub_resolver(table: dict[str, list[str]], asked: list[str]):
    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return table[host]

    return resolve


@pytest.mark.parametrize(
    "target",
    [
        "http://10.1.2.3/secret",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:192.168.0.1]/",
        "http://[fd00::5]/",
        "http://internal.test/admin",  # resolves (stub) to 10.0.0.5
        "http://rebind.test/admin",  # resolves (stub) to a public and a private address
        "http://2130706433/secret",  # 127.0.0.1 spelt as one number: never reaches a resolver
        "http://0177.0.0.1/secret",
        "file:///etc/passwd",
    ],
)
async def test_redirects_to_private_addresses_are_refused(aiohttp_server, target: str) -> None:
    server = await aiohttp_server(file_host())
    asked: list[str] = []
    table = {"files.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"], "rebind.test": ["93.184.216.34", "10.9.9.9"]}
    fetcher = Fetcher(FetchConfig(honour_robots=False), address_policy=LOOPBACK_OK, resolve=stub_resolver(table, asked))
    start = URL.build(scheme="http", host="files.test", port=server.port, path="/to", query={"target": target})
    async with fetcher:
        with pytest.raises(BlockedAddressError):
            async with fetcher.open(start, transcript=Transcript()):
                pass
    assert asked[0] == "files.test"
    assert server.app[LOG].hits["/to"] == 1



async def test_a_host_already_fetched_cannot_redirect_to_a_private_address(aiohttp_server) -> None:
    """Whatever is cached per host (resolver answers, connections, parsed hosts) never vets another hop."""
    server = await aiohttp_server(file_host())
    asked: list[str] = []
    table = {"files.test": ["127.0.0.1"], "internal.test": ["10.0.0.5"]}
    fetcher = Fetcher(FetchConfig(honour_robots=False), address_policy=LOOPBACK_OK, resolve=stub_resolver(table, asked))
    base = URL.build(scheme="http", host="files.test", port=server.port)
    async with fetcher:
        for _ in range(2):  # the host's answer is now cached and its connection kept alive
            response, body = await fetcher.get_small(base.with_path("/echo"), transcript=Transcript())
            assert (response.status, body) == (200, b"GET")
        for target in ("http://internal.test/admin", "http://10.1.2.3/secret", "http://[::ffff:10.0.0.1]/"):
            with pytest.raises(BlockedAddressError):
                async with fetcher.open(base.with_path("/to").with_query(target=target), transcript=Transcript()):
                    pass
    assert asked == ["files.test", "internal.test"]  # the public answer was cached; the redirect target was still vetted

async def test_loopback_is_refused_unless_allowed(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    url = f"http://127.0.0.1:{server.port}/echo"
    async with Fetcher(FetchConfig(honour_robots=False)) as fetcher:
        with pytest.raises(BlockedAddressError, match="loopback"):
            async with fetcher.open(url, transcript=Transcript()):
                pass
    async with Fetcher(FetchConfig(honour_robots=False), address_policy=LOOPBACK_OK) as fetcher:
        response, body = await fetcher.get_small(url, transcript=Transcript())
    assert (response.status, body) == (200, b"GET")


async def test_a_name_resolving_to_loopback_is_refused_by_default(aiohttp_server) -> None:
    server = await aiohttp_server(file_host())
    asked: list[str] = []
    resolve = stub_resolver({"localhost.test": ["127.0.0.1"]}, asked)
    async with Fetcher(FetchConfig(honour_robots=False), resolve=resolve) as fetcher:
        with pytest.raises(BlockedAddressError, match="loopback"):
            async with fetcher.open(f"http://localhost.test:{server.port}/echo", transcript=Transcript()):
                pass
    assert asked == ["localhost.test"]
