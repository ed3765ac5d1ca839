"""Politeness: per-host concurrency and spacing, a global concurrency cap, Retry-After, robots.txt.

`HostGate` knows nothing about HTTP: it is the reusable piece a distributed crawl keeps per
partition (one registrable domain per partition keeps its limits whole across a cluster).
`RobotsRules` caches one parsed robots.txt per origin, fetched through whatever function it is
given (the crawler passes its SSRF-guarded fetcher), following RFC 9309 for status codes, and
answers with a `RobotsVerdict` that goes into the evidence: which robots.txt, its status, and the
rule that decided.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.robotparser
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from yarl import URL

from modelsieve.crawler.model import utc_now
from modelsieve.crawler.netguard import BlockedAddressError
from modelsieve.fingerprint.errors import ModelsieveError

ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309: parse at least the first 500 KiB
ROBOTS_CACHE_ORIGINS = 50_000  # origins whose parsed robots.txt stays cached (oldest dropped first)
# and robots.txt text the cache may hold parsed: a parsed 512 KiB file takes ~4.5 MB of Python objects
ROBOTS_CACHE_BYTES = 32 * 1024 * 1024
_PRUNE_EVERY = 1024


@dataclass(frozen=True)
class PolitenessConfig:
    """Limits that keep the crawler a good citizen; the defaults suit a crawl over many hosts."""

    per_host_concurrency: int = 2
    per_host_delay: float = 0.0  # minimum seconds between the starts of two requests to one host
    global_concurrency: int = 64
    max_retry_after: float = 300.0  # a host's Retry-After is honoured up to this many seconds

    def __post_init__(self) -> None:
        if self.per_host_concurrency < 1 or self.global_concurrency < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.per_host_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")


class _Host:
    __slots__ = ("semaphore", "next_start", "users")

    def __init__(self, concurrency: int) -> None:
        self.semaphore = asyncio.Semaphore(concurrency)
        self.next_start = 0.0
        self.users = 0


class Admission:
    """One admitted request's slots; `release()` (idempotent) gives them back."""

    __slots__ = ("_gate", "_state")

    def __init__(self, gate: HostGate, state: _Host) -> None:
        self._gate: HostGate | None = gate
        self._state = state

    def release(self) -> None:
        """Give the host's slot back; calls after the first do nothing."""
        if self._gate is not None:
            gate, self._gate = self._gate, None
            gate._release(self._state)


class HostGate:
    """Admits requests so no host sees more than its concurrency, or requests closer than its delay."""

    def __init__(self, config: PolitenessConfig = PolitenessConfig(), clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._global = asyncio.Semaphore(config.global_concurrency)
        self._hosts: dict[str, _Host] = {}
        self._admitted = 0

    async def admit(self, host: str) -> Admission:
        """Wait for one request slot for `host` (and one global slot); release it when the request is done.

        Explicit acquire/release rather than a context manager: it runs for every request, and a
        response's slot is held until its body has been read.
        """
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(self.config.per_host_concurrency)
        state.users += 1
        try:
            await state.semaphore.acquire()
            try:
                while (wait := state.next_start - self._clock()) > 0:  # a deferral may land while we sleep
                    await asyncio.sleep(wait)
                state.next_start = self._clock() + self.config.per_host_delay
                await self._global.acquire()
            except BaseException:
                state.semaphore.release()
                raise
        except BaseException:
            self._leave(state)
            raise
        return Admission(self, state)

    def _release(self, state: _Host) -> None:
        self._global.release()
        state.semaphore.release()
        self._leave(state)

    def _leave(self, state: _Host) -> None:
        state.users -= 1
        self._admitted += 1
        if self._admitted % _PRUNE_EVERY == 0:
            self._prune()

    def defer(self, host: str, seconds: float) -> float:
        """Start no request to `host` for `seconds` (a Retry-After), capped; returns the wait applied."""
        wait = min(max(seconds, 0.0), self.config.max_retry_after)
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host(self.config.per_host_concurrency)
        state.next_start = max(state.next_start, self._clock() + wait)
        return wait

    def _prune(self) -> None:
        now = self._clock()
        for host in [h for h, s in self._hosts.items() if s.users == 0 and s.next_start <= now]:
            del self._hosts[host]


RobotsFetch = Callable[[URL], Awaitable[tuple[int, str]]]
"""Fetch an origin's /robots.txt: (status, text); raising OSError/ModelsieveError means unreachable."""


@dataclass(frozen=True)
class RobotsVerdict:
    """What robots.txt said about one URL, as evidence: which file, its status, and why."""

    robots_url: str
    status: int | None  # None: robots.txt could not be fetched
    fetched_at: str
    url: str
    allowed: bool
    rule: str  # the deciding line ("Disallow: /private/"), or why there is none ("no robots.txt (status 404) ...")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _RobotsFile:
    """One origin's robots.txt as fetched and parsed, with what the evidence says about it."""

    url: str
    status: int | None
    fetched_at: str
    parser: urllib.robotparser.RobotFileParser
    summary: str | None  # the whole answer when the status decides alone (4xx, 5xx, unreachable)
    size: int = 0  # characters of robots.txt parsed (what the cache budget counts)


# Lines the standard parser reads but the crawler never uses, and on which it can crash: it takes
# non-ASCII digits ("Crawl-delay: ¹") for numbers, then int() raises.
_UNUSED_FIELDS = ("crawl-delay", "request-rate")


def _parsable(line: str) -> bool:
    """Whether the standard parser can take this line: it drops fields the crawler never uses, and
    Allow/Disallow paths that urlparse refuses after unquoting (e.g. "//[", an unclosed IPv6 host)."""
    field, _, value = line.split("#", 1)[0].partition(":")
    field = field.strip().lower()
    if field.startswith(_UNUSED_FIELDS):
        return False
    if field in ("allow", "disallow"):
        try:
            urllib.parse.quote(urllib.parse.urlunparse(urllib.parse.urlparse(urllib.parse.unquote(value.strip()))))  # as RuleLine does
        except ValueError:  # UnicodeEncodeError (a lone surrogate) included
            return False
    return True


def parse_robots(text: str) -> urllib.robotparser.RobotFileParser:
    """A robots.txt body parsed for its rules (first ROBOTS_MAX_BYTES characters); never raises on hostile
    text: lines the standard parser would crash on are left out, the rest still apply."""
    parser = urllib.robotparser.RobotFileParser()
    parser.parse([line for line in text[:ROBOTS_MAX_BYTES].splitlines() if _parsable(line)])
    return parser


def deciding_rule(parser: urllib.robotparser.RobotFileParser, agent: str, url: str) -> str | None:
    """The robots.txt line that decides `url` for `agent`, found as `RobotFileParser.can_fetch` finds it."""
    parsed = urllib.parse.urlparse(urllib.parse.unquote(url))
    path = urllib.parse.quote(urllib.parse.urlunparse(("", "", parsed.path, parsed.params, parsed.query, parsed.fragment))) or "/"
    # RobotFileParser's rule groups (and the allow_all / disallow_all flags set below) are
    # undocumented attributes typeshed leaves out; can_fetch itself reads them.
    group = next((entry for entry in parser.entries if entry.applies_to(agent)), parser.default_entry)  # type: ignore[attr-defined]
    if group is None:
        return None
    return next((str(line) for line in group.rulelines if line.applies_to(path)), None)


class RobotsRules:
    """robots.txt per origin, fetched once (concurrent askers wait for the one fetch) and cached.

    RFC 9309: 2xx → the rules; 4xx → everything allowed; 5xx or unreachable → nothing allowed.
    429 (too many requests) counts as 5xx, as Google's crawlers count it: a site asking us to
    slow down has not said that it has no rules.
    The cache keeps at most `max_origins` origins and `max_cached_bytes` of parsed robots.txt text,
    dropping the oldest first (an origin asked again after that is fetched again).
    """

    def __init__(
        self, fetch: RobotsFetch, user_agent: str, *, max_cached_bytes: int = ROBOTS_CACHE_BYTES, max_origins: int = ROBOTS_CACHE_ORIGINS
    ) -> None:
        self._fetch = fetch
        self._agent = user_agent
        self._files: dict[str, asyncio.Task[_RobotsFile]] = {}
        self._max_bytes = max_cached_bytes
        self._max_origins = max_origins
        self._bytes = 0

    def cache_size(self) -> tuple[int, int]:
        """(origins cached, characters of robots.txt they hold parsed)."""
        return len(self._files), self._bytes

    async def verdict(self, url: URL) -> RobotsVerdict:
        """Whether robots.txt of the URL's origin lets this crawler request it, and why."""
        origin = str(url.origin())
        task = self._files.get(origin)
        if task is None:
            task = self._files[origin] = asyncio.ensure_future(self._load(url.origin(), origin))
        robots = task.result() if task.done() else await asyncio.shield(task)
        target = str(url)
        allowed = robots.parser.can_fetch(self._agent, target)
        rule = robots.summary or deciding_rule(robots.parser, self._agent, target) or "no rule matches: allowed"
        return RobotsVerdict(robots.url, robots.status, robots.fetched_at, target, allowed, rule)

    def _evict(self, keep: str) -> None:
        """Drop the oldest finished entries (never `keep`) until the cache is within its budgets."""
        victims = []
        held, count = self._bytes, len(self._files)
        for origin, task in self._files.items():  # oldest first; usually stops after one or two
            if held <= self._max_bytes and count <= self._max_origins:
                break
            if origin != keep and task.done():
                victims.append(origin)
                count -= 1
                held -= task.result().size if not task.cancelled() and task.exception() is None else 0
        for origin in victims:
            del self._files[origin]
        self._bytes = held

    async def _load(self, origin: URL, key: str) -> _RobotsFile:
        try:
            robots = await self._fetch_and_parse(origin)
        except BaseException:
            self._evict(keep=key)
            raise
        self._bytes += robots.size
        self._evict(keep=key)
        return robots

    async def _fetch_and_parse(self, origin: URL) -> _RobotsFile:
        parser = urllib.robotparser.RobotFileParser()  # replaced by the parsed file when there is one
        robots_url = origin.with_path("/robots.txt")
        fetched_at = utc_now()
        status: int | None
        summary: str | None
        size = 0
        try:
            status, text = await self._fetch(robots_url)
        except BlockedAddressError:
            raise  # not "unreachable": the host must not be contacted at all, and the reason must say so
        except (OSError, TimeoutError, ModelsieveError) as exc:  # unreachable: RFC 9309 says assume disallowed
            status, text, summary = None, "", f"robots.txt unreachable ({exc}): nothing allowed (RFC 9309)"
        if status is None:
            parser.disallow_all = True  # type: ignore[attr-defined]
        elif 200 <= status < 300:
            parser = parse_robots(text)
            summary, size = None, min(len(text), ROBOTS_MAX_BYTES)
        elif 400 <= status < 500 and status != 429:
            parser.allow_all = True  # type: ignore[attr-defined]
            summary = f"no robots.txt (status {status}): everything allowed"
        else:
            parser.disallow_all = True  # type: ignore[attr-defined]
            summary = f"robots.txt answered status {status}: nothing allowed (RFC 9309{'; 429 as Google reads it' if status == 429 else ''})"
        return _RobotsFile(str(robots_url), status, fetched_at, parser, summary, size)

    async def close(self) -> None:
        """Cancel robots.txt fetches still under way."""
        for task in self._files.values():
            task.cancel()
        await asyncio.gather(*self._files.values(), return_exceptions=True)
