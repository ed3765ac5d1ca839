"""Matching subjects (digests, fingerprints, URLs, files) against every list in a store.

`Matcher` keeps in-memory indexes loaded from the store and refreshes them from the event
sequence (only entries changed since the last refresh are read). A refresh builds the next
indexes beside the current ones and swaps them in at once, so lookups never wait for a refresh
and never see a half-applied one. A hit in an index is a candidate: the entry is read back
through the event log by the seq the index holds, in its current state, and confirmed on its
current content, so an entry retracted, disputed or replaced since the index saw it (on this
replica or another) is judged as it is now, before any refresh. Retracted and expired entries never
match; disputed ones match with `status: "disputed"`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from modelsieve.fingerprint.calibration import Cohort, Policy, assess
from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fuzzy import (
    DEFAULT_THRESHOLD,
    PUBLIC_KEY,
    BaseModel,
    Fingerprint,
    FingerprintKey,
    sign_codes,
)
from modelsieve.hashlists.files import FileEvidence, examine_file
from modelsieve.hashlists.digest_index import DigestIndex
from modelsieve.hashlists.fuzzy_index import FuzzyIndex, parse_fingerprint
from modelsieve.hashlists.model import DIGEST_BITS, EXACT_DIGEST_BITS, Entry, Match, MatchResult, normalise_digests, utc_now
from modelsieve.hashlists.store import Store
from modelsieve.hashlists.urls import domain_keys, normalise_url, url_key, url_prefix_keys

UNTRUSTED = "none"  # trust level whose publishers' entries never match
FINGERPRINT_CACHE_BYTES = 32 * 2**20  # parsed listed fingerprints kept, counted by their sketches' bytes


def _sketch_bytes(fingerprint: Fingerprint) -> int:
    return sum(sketch.nbytes for sketch in fingerprint.sketches.values())


def _digests_agree(name: str, listed: str, query: str) -> bool:
    if name == "autov3":
        length = min(len(listed), len(query))
        return listed[:length] == query[:length]
    return listed == query


@dataclass(frozen=True)
class DigestAgreement:
    """What a listed entry's digests and a query's say together: the names that agree (strongest
    first), the bits the strongest is worth, and the shared names that differ."""

    agreeing: tuple[str, ...]
    bits: int
    differing: tuple[str, ...] = ()


def digest_evidence(listed: Mapping[str, str], query: Mapping[str, str]) -> DigestAgreement | None:
    """How a listed entry and a query agree on their shared digests; None when they do not.

    A short digest that agrees while another differs is a collision, not a match (a CRC32 equal
    by chance while the SHA-256 differs). A digest of EXACT_DIGEST_BITS or more that agrees
    identifies the file whatever else differs: the list's other value is wrong or computed another
    way (CRC32 byte order, AutoV1 of a short file), and the match names it in `differing`.
    """
    shared = [name for name in query if name in listed]
    bits = {n: DIGEST_BITS.get(n, 4 * min(len(listed[n]), len(query[n]))) for n in shared}
    agreeing = sorted((n for n in shared if _digests_agree(n, listed[n], query[n])), key=lambda n: -bits[n])
    differing = tuple(n for n in shared if n not in agreeing)
    if not agreeing or (differing and bits[agreeing[0]] < EXACT_DIGEST_BITS):
        return None
    return DigestAgreement(tuple(agreeing), bits[agreeing[0]], differing)


@dataclass(frozen=True)
class _Indexes:
    """The indexes as of store sequence number `seq`; never changed once a refresh published them."""

    seq: int = 0
    digests: DigestIndex = field(default_factory=DigestIndex)
    fuzzy: FuzzyIndex = field(default_factory=FuzzyIndex)
    url_keys: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    domains: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


class Matcher:
    """Looks subjects up in every list of a store; see the module docstring.

    refresh_interval: seconds between checks of the store's event sequence (0: before every call).
    fingerprint_key / bases: how `match_path` fingerprints files (the key the lists were made with).
    cohorts: background cohorts by base name (`Store.cohorts`); a fuzzy match
    against a base with a cohort is calibrated, and reported when its estimated false-match rate
    reaches `policy.review_rate`. Without one it is flagged uncalibrated and reported from raw
    similarity `threshold` (policy.uncalibrated_review). fuzzy_top: most fuzzy matches
    reported; fuzzy_candidates: how many of the closest index candidates are scored exactly (each
    costs an `assess()`, ~0.08 ms for a LoRA pair: this bounds the latency, and with 10⁶ listed fingerprints decides
    how weak a true match can be and still be found; see the README).
    """

    @property
    def fingerprint_key(self) -> FingerprintKey:
        """The key files are fingerprinted with (the one the lists were made with)."""
        return self._key

    @property
    def bases(self) -> tuple[BaseModel, ...]:
        """The registered bases checkpoints are fingerprinted against."""
        return self._bases

    @classmethod
    def for_store(cls, store: Store, fingerprint_key: FingerprintKey = PUBLIC_KEY, **options: Any) -> Matcher:
        """A matcher using the store's registered bases and background cohorts for `fingerprint_key`.

        Every caller that fingerprints files (list add, match, crawl, the API) builds its matcher
        here, so checkpoints are always taken as deltas from the same bases and calibrated alike.
        """
        bases, cohorts = store.bases(fingerprint_key), store.cohorts(fingerprint_key)
        return cls(store, fingerprint_key=fingerprint_key, bases=bases, cohorts=cohorts, **options)

    def __init__(
        self,
        store: Store,
        *,
        refresh_interval: float = 1.0,
        fingerprint_key: FingerprintKey = PUBLIC_KEY,
        bases: Sequence[BaseModel] = (),
        threshold: float = DEFAULT_THRESHOLD,
        cohorts: Mapping[str, Cohort] | None = None,
        policy: Policy | None = None,
        fuzzy_top: int = 10,
        fuzzy_candidates: int = 32,
    ) -> None:
        self._store = store
        self._refresh_interval = refresh_interval
        self._key, self._bases = fingerprint_key, tuple(bases)
        self._cohorts = dict(cohorts or {})
        self._policy = policy if policy is not None else Policy(uncalibrated_review=threshold)
        self._fuzzy_top, self._fuzzy_candidates = fuzzy_top, fuzzy_candidates
        self._lock = threading.RLock()  # the LRU of parsed fingerprints
        self._refreshing = threading.Lock()  # one refresh at a time
        self._indexes = _Indexes()
        self._parsed: LRUCache[bytes, Fingerprint] = LRUCache(FINGERPRINT_CACHE_BYTES, getsizeof=_sketch_bytes)
        self._trust: dict[str, str] = {}
        self._checked = 0.0
        self.refresh()

    @property
    def seq(self) -> int:
        """The store sequence number the indexes reflect."""
        return self._indexes.seq

    @property
    def index_bytes(self) -> int:
        """Memory held by the digest and fingerprint index arrays."""
        indexes = self._indexes
        return indexes.digests.nbytes + indexes.fuzzy.nbytes

    def refresh(self) -> int:
        """Index every entry changed since the last refresh; returns the sequence number now reflected.

        The next indexes grow from copies of the current ones (sharing their arrays) and replace
        them in one assignment: lookups meanwhile use the current indexes, without waiting.
        """
        with self._refreshing:
            self._checked = time.monotonic()
            self._trust = {key.name: key.level for key in self._store.trusted_keys()}
            current = self._indexes
            latest = self._store.last_seq()
            if latest == current.seq:
                return latest
            digests, fuzzy = current.digests.copy(), current.fuzzy.copy()
            url_keys, domains = dict(current.url_keys), dict(current.domains)
            fingerprints = []
            for row in self._store.index_rows(changed_since=current.seq, until=latest):
                if row.status == "retracted":
                    continue
                if row.digests:
                    digests.add(row.seq, row.digests)
                if row.url:
                    key = url_key(row.url)
                    url_keys[key] = (*url_keys.get(key, ()), row.seq)
                if row.domain:
                    domains[row.domain] = (*domains.get(row.domain, ()), row.seq)
                if row.codes:
                    fingerprints.append((row.seq, row.codes))
            digests.compact()
            fuzzy.add_many(fingerprints)
            self._indexes = _Indexes(latest, digests, fuzzy, url_keys, domains)
            return latest

    def _maybe_refresh(self) -> None:
        """Refresh when the interval has passed, unless another thread is refreshing already."""
        if time.monotonic() - self._checked >= self._refresh_interval and not self._refreshing.locked():
            self.refresh()

    def _confirmed(self, seqs: Iterable[int]) -> list[Entry]:
        """The matchable entries behind index hits, each once, as they are now (see `Store.entries_by_seq`)."""
        wanted = set(seqs)
        if not wanted:
            return []
        now = utc_now()
        return [
            entry
            for entry in self._store.entries_by_seq(wanted)
            if entry.matchable(now) and self._trust.get(entry.origin or "", "full") != UNTRUSTED
        ]

    def _match(self, entry: Entry, kind: str, score: float = 1.0, **evidence: object) -> Match:
        return Match(
            entry_id=entry.id,
            list=entry.list,
            category=entry.category,
            source=entry.source,
            kind=kind,
            score=score,
            status=entry.status,
            origin=entry.origin,
            trust=self._trust.get(entry.origin, "unknown") if entry.origin else "local",
            evidence=entry.evidence,
            **evidence,  # type: ignore[arg-type]
        )

    def match_digests(self, digests: Mapping[str, str]) -> list[Match]:
        """Entries sharing a digest with the query (any name; AutoV3 also on its 12-hex prefix),
        strongest evidence first. Raises InvalidEntryError for a malformed value."""
        query = normalise_digests(digests)
        self._maybe_refresh()
        index = self._indexes.digests
        seqs = [seq for name, value in query.items() for seq in index.lookup(name, value)]
        matches = []
        for entry in self._confirmed(seqs):
            agreement = digest_evidence(entry.digests, query)
            if agreement is not None:
                matches.append(
                    self._match(
                        entry, agreement.agreeing[0], bits=agreement.bits, digests=agreement.agreeing, differing=agreement.differing
                    )
                )
        return sorted(matches, key=lambda m: (-(m.bits or 0), m.entry_id))

    def match_url(self, url: str) -> list[Match]:
        """URL entries covering the URL (itself or a parent path) and domain entries of its host or
        a parent domain. Raises InvalidEntryError for something that is not an http(s) URL."""
        normalised = normalise_url(url)
        domains = set(domain_keys(normalised))
        prefix_keys = set(url_prefix_keys(normalised))
        self._maybe_refresh()
        indexes = self._indexes
        url_seqs = {seq for key in prefix_keys for seq in indexes.url_keys.get(key, ())}
        domain_seqs = {seq for domain in domains for seq in indexes.domains.get(domain, ())}
        matches = []
        for entry in self._confirmed(url_seqs | domain_seqs):
            if entry.url and url_key(entry.url) in prefix_keys:
                matches.append(self._match(entry, "url"))
            elif entry.domain in domains:
                matches.append(self._match(entry, "domain"))
        return sorted(matches, key=lambda m: (m.kind != "url", m.entry_id))

    def _listed_fingerprint(self, blob: bytes) -> Fingerprint:
        """A listed entry's fingerprint, parsed once while it stays in the LRU (keyed by its bytes,
        so a replaced fingerprint is never served stale); parsed fingerprints also keep their
        prepared comparison matrices."""
        with self._lock:
            listed = self._parsed.get(blob)
        if listed is None:
            listed = parse_fingerprint(blob)
            if _sketch_bytes(listed) <= FINGERPRINT_CACHE_BYTES:
                with self._lock:
                    self._parsed[blob] = listed
        return listed

    def match_fingerprint(self, fingerprint: Fingerprint) -> list[Match]:
        """Listed fingerprints the query carries, strongest evidence first, at most fuzzy_top.

        Candidates come from the sign-code index; each is then scored exactly with `assess` (no
        per-component breakdown: matches do not carry one) and
        calibrated against its base's cohort (see the class docstring): every match carries its raw
        similarity, normalised score, estimated false-match rate and decision (review | action).
        Listed fingerprints taken with another key or scheme, or with no delta, are skipped.
        """
        codes = sign_codes(fingerprint)
        self._maybe_refresh()
        candidates = self._indexes.fuzzy.candidates(codes, limit=self._fuzzy_candidates)
        matches = []
        for entry in self._confirmed(seq for seq, _ in candidates):
            if entry.fingerprint is None:
                continue
            try:
                listed = self._listed_fingerprint(entry.fingerprint)
                comparison, calibrated = assess(fingerprint, listed, self._cohorts, breakdown=False)
            except FingerprintError:
                continue
            decision = calibrated.decision(self._policy) if comparison.tensors_compared else None
            if decision is not None:
                matches.append(
                    self._match(
                        entry,
                        "fuzzy",
                        comparison.score,
                        coefficient=comparison.coefficient,
                        base=comparison.base,
                        similarity=comparison.similarity,
                        calibration=calibrated,
                        decision=decision,
                    )
                )
        strength = lambda m: (m.decision != "action", m.calibration.false_match_rate or 1.0, -m.score, m.entry_id)  # noqa: E731
        return sorted(matches, key=strength)[: self._fuzzy_top]

    def match_path(self, path: str | os.PathLike[str]) -> MatchResult:
        """Hash and fingerprint one model file, then look both up.

        A file that cannot be fingerprinted (not a model, no float tensors) is still matched on its
        digests; the reason is kept in the result's `problems`. A fuzzy match of an entry already
        matched exactly is not repeated.
        """
        return self.match_evidence(examine_file(path, self._key, self._bases))

    def match_evidence(self, evidence: FileEvidence) -> MatchResult:
        """Look up a file's digests and fingerprint, however they were taken (a local file, an
        upload streamed to the HTTP API); see `match_path`."""
        matches = self.match_digests(evidence.digests)
        if evidence.fingerprint is not None:
            exact_ids = {m.entry_id for m in matches}
            matches += [m for m in self.match_fingerprint(evidence.fingerprint) if m.entry_id not in exact_ids]
        return MatchResult(evidence.path, tuple(matches), (evidence.problem,) if evidence.problem else ())

    def match_url_result(self, url: str) -> MatchResult:
        """`match_url` as a MatchResult whose subject is the URL."""
        return MatchResult(url, tuple(self.match_url(url)))

