"""The crawl core: check URLs concurrently and turn what is found into recommendations with evidence.

For each URL, cheapest first: the URL, its host and parent domains against listed services; what
the host publishes (a hub's LFS sha256, a model-version API's hashes) against listed digests;
then the file itself, read as little as possible (`safetensors_remote`), whole-file digests and a
partial fingerprint against the lists. Any failure becomes an "error" recommendation for that URL
with the evidence gathered so far; the crawl goes on.

`Crawler.check_many` is what one partition of a distributed crawl runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from yarl import URL

from modelsieve.crawler.fetch import FetchConfig, Fetcher, Transcript
from modelsieve.crawler.model import CrawlTarget, Evidence, Recommendation, utc_now
from modelsieve.crawler.netguard import AddressPolicy, BlockedAddressError, NameResolver, check_url, system_resolver
from modelsieve.crawler.policy import PolicyConfig, decide
from modelsieve.crawler.politeness import HostGate, PolitenessConfig
from modelsieve.crawler.providers import Provider, Published, provider_for
from modelsieve.crawler.providers.civitai import CivitaiProvider
from modelsieve.crawler.providers.generic import GenericProvider
from modelsieve.crawler.providers.huggingface import HuggingFaceProvider
from modelsieve.crawler.safetensors_remote import RemoteContent, RemoteReadConfig, read_head, read_tensors
from modelsieve.fingerprint.errors import FingerprintError, ModelsieveError
from modelsieve.fingerprint.readers.base import TensorInfo
from modelsieve.fingerprint.readers.safetensors import SafetensorsHeader
from modelsieve.hashlists.model import Match


class Lookup(Protocol):
    """What a crawl asks of the lists (the store's matcher plus the fingerprint scheme)."""

    def match_url(self, url: str) -> Sequence[Match]:
        """Listed URLs and domains covering `url`."""

    def match_digests(self, digests: Mapping[str, str]) -> Sequence[Match]:
        """Entries sharing a digest with the file."""

    def select_tensors(self, infos: Sequence[TensorInfo], budget_fraction: float) -> Sequence[TensorInfo]:
        """The tensors a partial fingerprint needs, within `budget_fraction` of their bytes (none: no fuzzy matching)."""

    def match_tensors(self, header: SafetensorsHeader, arrays: Mapping[str, np.ndarray]) -> Sequence[Match]:
        """Near-copy matches of the fingerprint of the selected tensors; FingerprintError when they make none."""


def default_providers() -> tuple[Provider, ...]:
    """Hugging Face, Civitai, then the generic provider that claims every other URL."""
    return (HuggingFaceProvider(), CivitaiProvider(), GenericProvider())


@dataclass(frozen=True)
class CrawlConfig:
    """Everything that shapes a crawl; the defaults are polite and safe for the open web."""

    fetch: FetchConfig = FetchConfig()
    politeness: PolitenessConfig = PolitenessConfig()
    remote: RemoteReadConfig = RemoteReadConfig()
    policy: PolicyConfig = PolicyConfig()
    addresses: AddressPolicy = AddressPolicy()
    providers: tuple[Provider, ...] = field(default_factory=default_providers)
    check_timeout: float = 900.0  # one URL, every request included
    concurrency: int = 256  # URLs checked at once (requests are further limited per host and globally)
    tensor_concurrency: int = 8  # checks reading and fingerprinting tensors at once (each holds ≤ 5 % of a file)


class _Decided(Exception):
    """A URL the check was about to request is listed strongly enough to act on: nothing more is read."""


@dataclass
class _Findings:
    """What one check has learnt so far (mutable while the check runs)."""

    transcript: Transcript = field(default_factory=Transcript)
    matches: list[Match] = field(default_factory=list)
    basis: str | None = None
    published: Published | None = None
    content: RemoteContent | None = None
    fingerprint_problem: str | None = None  # why the tensors read made no fingerprint (so no near-copy could match)
    listed_hop: str | None = None  # the listed URL a redirect or download link led to, where the check stopped


class Crawler:
    """Checks URLs against the lists; use `async with Crawler(lookup, config) as crawler`."""

    def __init__(self, lookup: Lookup, config: CrawlConfig = CrawlConfig(), *, resolve: NameResolver = system_resolver) -> None:
        self.lookup = lookup
        self.config = config
        self.fetcher = Fetcher(config.fetch, gate=HostGate(config.politeness), address_policy=config.addresses, resolve=resolve)
        self._tensor_slots = asyncio.Semaphore(config.tensor_concurrency)

    async def __aenter__(self) -> Crawler:
        await self.fetcher.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.fetcher.__aexit__(*exc_info)

    async def check(self, target: CrawlTarget) -> Recommendation:
        """The recommendation for one URL; failures become action "error", never exceptions."""
        started_at = utc_now()
        findings = _Findings()
        try:
            async with asyncio.timeout(self.config.check_timeout):
                await self._examine(target, findings)
        except _Decided:
            pass
        except ModelsieveError as exc:
            return self._recommend(target, findings, started_at, error=str(exc))
        except TimeoutError:
            return self._recommend(target, findings, started_at, error=f"the check took longer than {self.config.check_timeout:g} s")
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure costs this URL, never the whole crawl
            return self._recommend(target, findings, started_at, error=f"unexpected {type(exc).__name__}: {exc}")
        return self._recommend(target, findings, started_at)

    async def check_many(self, targets: Iterable[CrawlTarget]) -> AsyncIterator[Recommendation]:
        """Recommendations in completion order, `config.concurrency` checks in flight."""
        source = iter(targets)
        results: asyncio.Queue[Recommendation | None] = asyncio.Queue(maxsize=self.config.concurrency)

        async def worker() -> None:
            for target in source:  # the workers share one iterator: each takes the next target
                await results.put(await self.check(target))

        async def run_all() -> None:
            try:
                async with asyncio.TaskGroup() as group:  # one worker failing stops the others
                    for _ in range(self.config.concurrency):
                        group.create_task(worker())
            finally:
                task = asyncio.current_task()
                if task is None or not task.cancelling():
                    await results.put(None)

        everything = asyncio.ensure_future(run_all())
        try:
            while (recommendation := await results.get()) is not None:
                yield recommendation
            await everything  # re-raise what stopped the workers (e.g. an unreadable input)
        finally:
            everything.cancel()
            await asyncio.gather(everything, return_exceptions=True)

    async def _examine(self, target: CrawlTarget, findings: _Findings) -> None:
        try:
            url = URL(target.url)
        except (ValueError, TypeError) as exc:
            raise BlockedAddressError(f"{target.url!r} is not a URL: {exc}") from None
        check_url(url, self.config.addresses)
        findings.matches += self.lookup.match_url(target.url)
        if self._settled(findings, "url"):
            return
        findings.transcript.before_request = self._url_vetter({target.url, str(url)}, findings)
        provider = provider_for(url, self.config.providers)
        findings.published = await provider.published(url, self.fetcher, findings.transcript)
        if findings.published.digests:
            findings.matches += self.lookup.match_digests(findings.published.digests)
            if self._settled(findings, "published"):
                return
        select, remote = self.lookup.select_tensors, self.config.remote
        # Checks holding tensors in memory are bounded (a streamed download holds a slot while it
        # captures, then again to fingerprint); header-only checks go on at full concurrency.
        first = await read_head(
            self.fetcher, findings.published.download_url, findings.transcript, select, remote, capture_slots=self._tensor_slots
        )
        if isinstance(first, RemoteContent):
            async with self._tensor_slots if first.arrays else contextlib.nullcontext():
                await self._match_content(first, findings)
            return
        spans = first.selected_spans(select, remote)
        async with self._tensor_slots if spans else contextlib.nullcontext():
            content = await read_tensors(self.fetcher, first, findings.transcript, spans, remote)
            await self._match_content(content, findings)

    async def _match_content(self, content: RemoteContent, findings: _Findings) -> None:
        findings.content = content
        found: list[Match] = []
        if content.digests:
            found += self.lookup.match_digests(content.digests)
        if content.header is not None and content.arrays:
            try:
                found += await asyncio.to_thread(self.lookup.match_tensors, content.header, content.arrays)
            except FingerprintError as exc:  # only digests could match: the evidence says why
                findings.fingerprint_problem = str(exc)
        findings.matches += found
        findings.basis = "content" if found else findings.basis

    def _url_vetter(self, seen: set[str], findings: _Findings) -> Callable[[URL], None]:
        """Matches every URL the check requests but `seen` (a redirect hop, a hub's download link)
        against the listed URLs and domains before it is requested; stops the check when that settles it."""

        def vet(url: URL) -> None:
            text = str(url)
            if text in seen:
                return
            seen.add(text)
            found = self.lookup.match_url(text)
            if found:
                findings.matches += found
                if self._settled(findings, "url"):
                    findings.listed_hop = text
                    raise _Decided

        return vet

    def _settled(self, findings: _Findings, basis: str) -> bool:
        """Whether the matches so far already call for acting (so nothing more need be read)."""
        if not findings.matches:
            return False
        findings.basis = findings.basis or basis
        return decide(findings.matches, self.config.policy).action in ("delist", "takedown")

    def _recommend(self, target: CrawlTarget, findings: _Findings, started_at: str, error: str | None = None) -> Recommendation:
        finished_at = utc_now()
        matches = _ordered(findings.matches, self.config.policy)
        decision = decide(matches, self.config.policy)
        exchanges = findings.transcript.exchanges
        final = exchanges[-1] if exchanges else None
        content = findings.content
        evidence = Evidence(
            started_at=started_at,
            finished_at=finished_at,
            matches=matches,
            basis=findings.basis if matches else None,
            provider=findings.published.to_json() if findings.published and findings.published.provider != "generic" else None,
            digests=dict(content.digests) if content else {},
            file=_file_evidence(content, findings.fingerprint_problem),
            response=(
                {"status": final.status, "url": final.url, "headers": dict(final.headers)} if final is not None else {}
            ),
            requests=findings.transcript.to_json(),
            robots=[verdict.to_json() for verdict in findings.transcript.robots],
            bytes_read=findings.transcript.bytes_read,
        )
        action, reason = decision.action, decision.reason
        if error is not None and action in ("none", "review"):
            # A failure after a weak match keeps the match in the evidence but the action says "error".
            reason = error if action == "none" else f"{error} (after: {reason})"
            action = "error"
        return Recommendation(
            url=target.url,
            final_url=content.final_url if content else findings.listed_hop or (final.url if final else None),
            action=action,
            reason=reason,
            evidence=evidence,
            checked_at=finished_at,
            context=target.context,
        )


def _ordered(matches: Sequence[Match], policy: PolicyConfig) -> list[Match]:
    """Matches with the decisive one first, the rest in the order found, duplicates dropped."""
    unique = list({(m.entry_id, m.kind): m for m in matches}.values())
    decisive = decide(unique, policy).match
    return sorted(unique, key=lambda m: m is not decisive)


def _file_evidence(content: RemoteContent | None, fingerprint_problem: str | None) -> dict[str, Any]:
    if content is None:
        return {}
    header = content.header
    return {
        "size": content.file_size,
        "format": "safetensors" if header is not None else None,
        "read": "ranges" if content.ranged else "whole",
        "header_length": header.header_length if header is not None else None,
        "tensors": len(header.spans) if header is not None else None,
        "tensors_read": sorted(content.arrays),
        "problem": content.problem,
        "fingerprint_problem": fingerprint_problem,
    }
