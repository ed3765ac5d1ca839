"""SSRF guard: which addresses the crawler may connect to, and a resolver that hands out only those.

The crawler resolves every name itself (through a pluggable `NameResolver`), refuses a name when
any of its addresses is not public, and gives aiohttp only the vetted addresses, so the
connection is pinned to what was checked (no second lookup, no DNS rebinding between check and
connect). IP literals never reach a resolver in aiohttp, so `check_url` vets them before every
request and every redirect hop.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.urls import looks_like_ip_literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NameResolver = Callable[[str, int], Awaitable[list[str]]]
"""An async function (host, port) -> IP address strings; the default asks the system (getaddrinfo)."""

ALLOWED_SCHEMES = frozenset({"http", "https"})

_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
# IANA special-purpose blocks whose flags vary between Python releases: refuse them explicitly.
_SPECIAL_PURPOSE = {
    ipaddress.ip_network("100.64.0.0/10"): "shared (carrier-grade NAT)",
    ipaddress.ip_network("192.0.0.0/24"): "IETF protocol assignment",
    ipaddress.ip_network("192.88.99.0/24"): "6to4 relay anycast",
    ipaddress.ip_network("198.18.0.0/15"): "benchmarking",
}


class BlockedAddressError(ModelsieveError):
    """A URL names, or resolves to, an address the crawler must not connect to."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public addresses are allowed anyway: loopback only for tests and operators."""

    allow_loopback: bool = False


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, Teredo server/client), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    if any(address in prefix for prefix in _NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.teredo is not None:
        return address.teredo[1]  # the client's obfuscated-then-decoded IPv4
    compatible = int(address)
    if compatible >> 32 == 0 and compatible > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(compatible)
    return None


def _address_class(address: IPAddress) -> str | None:
    """Why an address is not public ("private", "loopback", ...), or None when it is."""
    for attribute in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{attribute}"):
            return attribute.replace("_", "-")
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    for network, name in _SPECIAL_PURPOSE.items():
        if address.version == network.version and address in network:
            return name
    if not address.is_global:
        return "non-global"
    return None


def refusal_reason(address: IPAddress, policy: AddressPolicy) -> str | None:
    """Why the crawler must not connect to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        # Embedded forms never get the loopback allowance: only plain 127/8 and ::1 are "loopback".
        inner_reason = refusal_reason(inner, AddressPolicy()) if inner is not None else None
        if inner_reason:
            return f"{inner_reason} (embeds {inner})"
    reason = _address_class(address)
    if reason == "loopback" and policy.allow_loopback:
        return None
    return reason


@functools.lru_cache(maxsize=1 << 16)  # pure; asked before every request (a name costs two failed parses)
def parse_ip(text: str) -> IPAddress | None:
    """An IP address from a URL host (brackets and IPv6 zone stripped), or None for a name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_url(url: URL, policy: AddressPolicy) -> None:
    """Refuse URLs the crawler must not request before any connection: scheme, host, IP literals."""
    if url.scheme not in ALLOWED_SCHEMES:
        raise BlockedAddressError(f"{url}: only http and https URLs are crawled, not {url.scheme or 'no scheme'!r}")
    host = url.raw_host  # the host as sent and connected to (IDNA-encoded); decoding it is costly and adds nothing
    if not host:
        raise BlockedAddressError(f"{url}: the URL has no host")
    if url.raw_user is not None or url.raw_password is not None:
        raise BlockedAddressError(f"{url}: URLs with credentials are not crawled")
    literal = parse_ip(host)
    if literal is not None:
        reason = refusal_reason(literal, policy)
        if reason:
            raise BlockedAddressError(f"{url}: address {literal} is {reason}")
    elif looks_like_ip_literal(host):
        # aiohttp takes such a host for an IP literal and skips the resolver (some releases then
        # hand it to the socket, which reads 2130706433, 127.1 or 0177.0.0.1 as 127.0.0.1): refuse
        # it rather than let it pass unvetted.
        raise BlockedAddressError(f"{url}: {host!r} is not a canonical IP address, and not a name either")


def vet_addresses(host: str, addresses: Iterable[str], policy: AddressPolicy) -> list[IPAddress]:
    """The parsed addresses of `host`; refuse the name if any address is not allowed or none exist."""
    vetted: list[IPAddress] = []
    for text in addresses:
        address = parse_ip(text)
        if address is None:
            raise BlockedAddressError(f"{host}: the resolver returned {text!r}, which is not an IP address")
        reason = refusal_reason(address, policy)
        if reason:
            raise BlockedAddressError(f"{host} resolves to {address}, which is {reason}")
        vetted.append(address)
    if not vetted:
        raise BlockedAddressError(f"{host}: the name resolves to no address")
    return vetted


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for `host` (getaddrinfo), as address strings."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that returns only vetted addresses, pinning each connection to them."""

    def __init__(self, policy: AddressPolicy, resolve: NameResolver = system_resolver) -> None:
        self.policy = policy
        self._resolve = resolve

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = vet_addresses(host, await self._resolve(host, port), self.policy)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None
