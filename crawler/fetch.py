"""HTTP for the crawler: SSRF-guarded, polite, bounded, and recorded as evidence.

`Fetcher.open(url, transcript=...)` follows redirects itself (re-checking every hop's address and
robots.txt), retries 429/5xx and dropped connections with exponential backoff and full jitter
(honouring Retry-After, which also pauses the whole host), and yields the final `Response`,
whose body the caller reads with a size cap. Every exchange lands in the check's `Transcript`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from modelsieve.crawler.model import utc_now
from modelsieve.crawler.netguard import AddressPolicy, GuardedResolver, NameResolver, check_url, system_resolver
from modelsieve.crawler.politeness import Admission, HostGate, PolitenessConfig, RobotsRules, RobotsVerdict
from modelsieve.fingerprint.errors import ModelsieveError

DEFAULT_USER_AGENT = (
    "modelsieve-crawler/0.1 (checks links against hashlists of known-harmful AI models; "
    "reads safetensors headers by Range; honours robots.txt)"
)
ROBOTS_TOKEN = "modelsieve"
RELEVANT_HEADERS = (
    "content-type",
    "content-length",
    "content-range",
    "content-encoding",
    "accept-ranges",
    "etag",
    "last-modified",
    "location",
    "retry-after",
    "x-linked-etag",
    "x-linked-size",
    "x-repo-commit",
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SMALL_BODY_BYTES = 4 * 1024 * 1024  # API answers, robots.txt
_DIGITS = re.compile(r"[0-9]{1,20}")
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20}|\*)\s*$", re.IGNORECASE)  # ASCII digits, bounded


class FetchError(ModelsieveError):
    """A request could not be completed (network, status, size, redirects); the message says which."""


class RobotsDisallowedError(FetchError):
    """robots.txt asks this crawler not to request the URL."""


@dataclass(frozen=True)
class FetchConfig:
    """Timeouts, retries, redirects and caps for every request; defaults suit a large crawl."""

    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # longest silence while reading a body
    total_timeout: float = 600.0  # one request, body included (full downloads are capped by size too)
    # after its first seconds a body must average this much, so a host dripping bytes (never silent
    # for read_timeout) holds a request slot for seconds, not for total_timeout
    min_bytes_per_second: float = 8 * 1024
    rate_grace_seconds: float = 30.0
    max_redirects: int = 5
    max_retries: int = 3
    backoff_base: float = 0.5  # seconds; attempt n waits uniform(0, base·2ⁿ), at most backoff_max
    backoff_max: float = 30.0
    honour_robots: bool = True


@dataclass(frozen=True)
class Exchange:
    """One HTTP request and what came back, as evidence."""

    method: str
    url: str
    status: int
    headers: Mapping[str, str]
    request_range: str | None
    bytes_read: int
    started_at: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "status": self.status,
            "headers": dict(self.headers),
            "range": self.request_range,
            "bytes_read": self.bytes_read,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class Transcript:
    """Every exchange made while checking one URL, in order, and what robots.txt said of each URL requested.

    `before_request`, if set, sees every URL the check is about to request (each redirect hop
    too) before anything is sent to it, and may raise to stop the request.
    """

    exchanges: list[Exchange] = field(default_factory=list)
    robots: list[RobotsVerdict] = field(default_factory=list)
    before_request: Callable[[URL], None] | None = None

    def note_robots(self, verdict: RobotsVerdict) -> None:
        """Keep a robots.txt verdict (once per URL: the Range requests of one file repeat it)."""
        if not any(known.url == verdict.url for known in self.robots):
            self.robots.append(verdict)

    @property
    def bytes_read(self) -> int:
        return sum(e.bytes_read for e in self.exchanges)

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.exchanges]


def relevant_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The response headers kept as evidence (those of RELEVANT_HEADERS that are present)."""
    return {name: headers[name] for name in RELEVANT_HEADERS if name in headers}


def decimal(value: str | None) -> int | None:
    """A header's non-negative decimal integer (ASCII digits only), or None."""
    value = (value or "").strip()
    return int(value) if _DIGITS.fullmatch(value) else None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None when absent or junk."""
    if not value:
        return None
    seconds = decimal(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """(first, last, total or None) from `bytes first-last/total`; FetchError for anything else."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        raise FetchError(f"unusable Content-Range {value!r}")
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        raise FetchError(f"inconsistent Content-Range {value!r}")
    return first, last, total


def range_header(first: int, last: int) -> str:
    """An HTTP Range value for bytes first..last inclusive."""
    return f"bytes={first}-{last}"


class Response:
    """The final response of a request; read its body through `read` or `chunks` (both counted)."""

    def __init__(self, raw: aiohttp.ClientResponse, url: URL, *, min_rate: float, grace: float) -> None:
        self._raw = raw
        self.url = url
        self.status = raw.status
        self.headers = raw.headers
        self.bytes_read = 0
        self._min_rate, self._grace = min_rate, grace

    @property
    def content_length(self) -> int | None:
        return decimal(self.headers.get("Content-Length"))

    def _refuse_encoded(self) -> None:
        """FetchError for a body sent content-encoded although only identity was accepted: its bytes
        are not what the host serves (a browser would decode them), so no digest of them means anything."""
        encoding = " ".join(self.headers.get("Content-Encoding", "").split()).lower()
        if encoding not in ("", "identity"):
            raise FetchError(f"{self.url}: the host sent the body {encoding}-encoded although only identity was accepted; not read")

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body in chunks; FetchError when it ends before its Content-Length, the read stalls, or
        the body falls behind `min_bytes_per_second` after the grace time. The caller's time between
        chunks counts too (bytes arriving meanwhile wait in the buffer, so it cannot be told apart);
        callers hash or capture each chunk at once, thousands of times faster than the floor."""
        self._refuse_encoded()
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = aiter(self._raw.content.iter_chunked(size))
        while True:
            pace = asyncio.timeout_at(started + self._grace + self.bytes_read / self._min_rate)  # when these bytes stop being enough
            try:
                async with pace:
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                if pace.expired():
                    raise FetchError(
                        f"{self.url}: the host sent {self.bytes_read} bytes in {loop.time() - started:.0f} s, slower "
                        f"than {self._min_rate:g} bytes a second: not read further"
                    ) from None
                raise self._body_failure(exc) from None
            self.bytes_read += len(chunk)
            yield chunk
        declared = self.content_length
        if declared is not None and self.bytes_read != declared:
            raise FetchError(f"{self.url}: truncated response: {self.bytes_read} of {declared} bytes")

    def _body_failure(self, exc: BaseException) -> FetchError:
        if isinstance(exc, aiohttp.ClientPayloadError):
            return FetchError(f"{self.url}: truncated response: the body ended after {self.bytes_read} bytes")
        return FetchError(f"{self.url}: reading the body failed after {self.bytes_read} bytes: {_describe(exc)}")

    async def read(self, limit: int) -> bytes:
        """The whole body, refusing (FetchError) one that declares or delivers more than `limit` bytes."""
        self._refuse_encoded()
        declared = self.content_length
        if declared is not None and declared > limit:
            raise FetchError(f"{self.url}: response of {declared} bytes exceeds the cap of {limit}")
        parts: list[bytes] = []
        async for chunk in self.chunks():
            parts.append(chunk)
            if self.bytes_read > limit:
                raise FetchError(f"{self.url}: response exceeds the cap of {limit} bytes")
        return b"".join(parts)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class Fetcher:
    """An SSRF-guarded, polite HTTP client; use `async with Fetcher(...) as fetcher`."""

    def __init__(
        self,
        config: FetchConfig = FetchConfig(),
        *,
        gate: HostGate | None = None,
        address_policy: AddressPolicy = AddressPolicy(),
        resolve: NameResolver = system_resolver,
    ) -> None:
        self.config = config
        self.gate = gate or HostGate(PolitenessConfig())
        self.address_policy = address_policy
        self._resolve = resolve
        self._session: aiohttp.ClientSession | None = None
        self._robots = RobotsRules(self._fetch_robots, ROBOTS_TOKEN) if config.honour_robots else None

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.address_policy, self._resolve),
            limit=self.gate.config.global_concurrency,
            limit_per_host=0,  # the gate enforces per-host limits, for redirects and retries too
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.config.total_timeout,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.read_timeout,
            ),
            headers={"User-Agent": self.config.user_agent, "Accept-Encoding": "identity"},
            auto_decompress=False,
            trust_env=False,  # no proxies from the environment: connections go where the guard says
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._robots is not None:
            await self._robots.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def open(
        self,
        url: str | URL,
        *,
        transcript: Transcript,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
        check_robots: bool = True,
    ) -> AsyncIterator[Response]:
        """The final response for `url` after redirects and retries, its slot held while the block runs."""
        current = URL(url) if isinstance(url, str) else url
        for _hop in range(self.config.max_redirects + 1):
            check_url(current, self.address_policy)
            if transcript.before_request is not None:
                transcript.before_request(current)
            if check_robots and self._robots is not None:
                verdict = await self._robots.verdict(current)
                transcript.note_robots(verdict)
                if not verdict.allowed:
                    raise RobotsDisallowedError(f"{current}: robots.txt disallows it for {ROBOTS_TOKEN} ({verdict.rule})")
            raw, admission, started_at, started = await self._send_with_retries(method, current, headers, transcript)
            try:
                if follow_redirects and raw.status in REDIRECT_STATUSES and "Location" in raw.headers:
                    transcript.exchanges.append(self._exchange(method, current, raw, headers, 0, started_at, started))
                    current = _redirect_target(current, raw.headers["Location"])
                    method = "GET" if raw.status == 303 and method != "HEAD" else method
                    continue
                response = Response(raw, current, min_rate=self.config.min_bytes_per_second, grace=self.config.rate_grace_seconds)
                try:
                    yield response
                finally:
                    transcript.exchanges.append(
                        self._exchange(method, current, raw, headers, response.bytes_read, started_at, started)
                    )
                return
            finally:
                raw.release()
                admission.release()
        raise FetchError(f"{url}: more than {self.config.max_redirects} redirects")

    async def get_small(
        self, url: str | URL, *, transcript: Transcript, limit: int = SMALL_BODY_BYTES, check_robots: bool = True
    ) -> tuple[Response, bytes]:
        """GET a small document (API answer, robots.txt): the final response and its capped body."""
        async with self.open(url, transcript=transcript, check_robots=check_robots) as response:
            return response, await response.read(limit)

    async def _fetch_robots(self, url: URL) -> tuple[int, str]:
        response, body = await self.get_small(url, transcript=Transcript(), check_robots=False)
        return response.status, body.decode("utf-8", errors="replace")

    async def _send_with_retries(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | None,
        transcript: Transcript,
    ) -> tuple[aiohttp.ClientResponse, Admission, str, float]:
        """Send one request, retrying 429/5xx and dropped connections. The caller must release the
        last response and then its admission (the host slot stays held while the body is read)."""
        assert self._session is not None, "use the Fetcher as an async context manager"
        host = url.raw_host or ""  # the politeness key: the host as connected to
        for attempt in range(self.config.max_retries + 1):
            last = attempt == self.config.max_retries
            admission = await self.gate.admit(host)
            try:
                started_at, started = utc_now(), time.monotonic()  # the request starts once admitted
                raw = await self._session.request(method, url, headers=headers, allow_redirects=False)
            except (aiohttp.ClientConnectorDNSError, aiohttp.InvalidURL, aiohttp.ClientSSLError, aiohttp.ClientResponseError) as exc:
                # No name, a bad URL, a TLS failure, an answer that breaks HTTP: asking again changes nothing.
                admission.release()
                raise FetchError(f"{url}: {_describe(exc)}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                admission.release()
                if last:
                    raise FetchError(f"{url}: {_describe(exc)} (after {attempt + 1} attempts)") from None
                await asyncio.sleep(self._backoff(attempt))
                continue
            except BaseException:
                admission.release()
                raise
            if raw.status not in RETRY_STATUSES or last:
                return raw, admission, started_at, started
            transcript.exchanges.append(self._exchange(method, url, raw, headers, 0, started_at, started))
            raw.release()
            admission.release()
            asked = retry_after_seconds(raw.headers.get("Retry-After"))
            if asked is not None and asked > self.gate.config.max_retry_after:
                raise FetchError(f"{url}: status {raw.status}, the host asks to wait {asked:.0f} s (more than we wait)")
            if asked is not None:
                self.gate.defer(host, asked)  # the whole host waits, not only this request
            await asyncio.sleep(self._backoff(attempt) if asked is None else 0)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.config.backoff_max, self.config.backoff_base * 2**attempt))

    @staticmethod
    def _exchange(
        method: str,
        url: URL,
        raw: aiohttp.ClientResponse,
        headers: Mapping[str, str] | None,
        bytes_read: int,
        started_at: str,
        started: float,
    ) -> Exchange:
        return Exchange(
            method=method,
            url=str(url),
            status=raw.status,
            headers=relevant_headers(raw.headers),
            request_range=(headers or {}).get("Range"),
            bytes_read=bytes_read,
            started_at=started_at,
            seconds=time.monotonic() - started,
        )


def _redirect_target(current: URL, location: str) -> URL:
    try:
        target = current.join(URL(location.strip()))
    except ValueError:
        raise FetchError(f"{current}: unusable redirect Location {location!r}") from None
    return target.with_fragment(None)
