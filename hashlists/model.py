"""The domain of hashlists: lists, entries, events and matches, plus the validation of their fields.

Everything here is a small frozen dataclass or a plain function; storage lives in `store.py`
(the interface) and `sqlite_store.py` (the embedded backend), matching in `matcher.py`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

from modelsieve.fingerprint.calibration import CalibratedScore
from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.fuzzy_index import parse_fingerprint
from modelsieve.hashlists.urls import listed_domain, normalise_url

# The contract's digest names and the lengths (hex characters) a value of each may have.
# AutoV3 is stored in full (64) but Civitai publishes only its first 12 hex, so both are accepted.
DIGEST_LENGTHS: Mapping[str, tuple[int, ...]] = {
    "sha256": (64,),
    "blake3": (64,),
    "md5": (32,),
    "sha1": (40,),
    "crc32": (8,),
    "autov1": (8,),
    "autov2": (10,),
    "autov3": (64, 12),
}
AUTOV3_PREFIX = 12

ENTRY_KINDS = ("checkpoint", "lora", "other", "service")
CATEGORIES = ("1", "2a", "2b", "2c", "nudify-service")
EVIDENCE_TYPES = ("exact-file", "fuzzy", "osint-report")
STATUSES = ("active", "retracted", "disputed")
OPINIONS = ("dispute", "confirm")
# Digest agreement with fewer bits does not identify a file on its own (CRC32, AutoV1, AutoV2, a
# 12-hex AutoV3): at a search engine's scale such digests collide by chance, and AutoV1 (64 KB at
# offset 1 MiB) is equal across fine-tunes of one base that leave those bytes alone.
EXACT_DIGEST_BITS = 64
# Bits of evidence an equal digest gives; AutoV3 counts its compared length (12 or 64 hex).
DIGEST_BITS = {"sha256": 256, "blake3": 256, "sha1": 160, "md5": 128, "autov2": 40, "autov1": 32, "crc32": 32}


def identifying_digests(digests: Mapping[str, str]) -> dict[str, str]:
    """The digests of a normalised set that identify a file alone (EXACT_DIGEST_BITS or more)."""
    return {name: value for name, value in digests.items() if DIGEST_BITS.get(name, 4 * len(value)) >= EXACT_DIGEST_BITS}

_HEX = re.compile(r"[0-9a-f]+")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_LIST_NAME = re.compile(rf"{_NAME}(/{_NAME})?")
_PUBLISHER_NAME = re.compile(_NAME)
_ENTRY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def entry_identity(entry: NewEntry) -> str:
    """What an entry lists, as a hash: a list never holds two entries with the same identity,
    so importing the same hash list twice adds nothing the second time."""
    parts = [f"{name}={value}" for name, value in sorted(entry.digests.items())]
    if entry.fingerprint:
        parts.append("fingerprint=" + hashlib.sha256(entry.fingerprint).hexdigest())
    parts += [f"url={entry.url}" if entry.url else "", f"domain={entry.domain}" if entry.domain else ""]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


def new_entry_id() -> str:
    """A fresh entry id: 96 random bits, so ids stay unique across every platform that exchanges them."""
    return new_entry_ids(1)[0]


def new_entry_ids(count: int) -> list[str]:
    """`count` fresh entry ids (see `new_entry_id`) from one read of the system's random source (bulk adds)."""
    random_hex = secrets.token_hex(12 * count)
    return ["e" + random_hex[24 * i : 24 * i + 24] for i in range(count)]


def utc_now() -> str:
    """The current time as ISO 8601 UTC with second precision, e.g. 2026-11-23T14:10:01Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_time(timestamp: float) -> str:
    """A Unix time as `utc_now` writes times, e.g. 2026-11-23T14:10:01Z."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalise_timestamp(value: str) -> str:
    """An ISO 8601 date or date-time, returned in UTC as `YYYY-MM-DDTHH:MM:SSZ` (a date means 00:00).

    The year always has four digits, so stored times compare as strings in time order (expiry is
    such a comparison); a time whose UTC form falls outside years 1-9999 is refused."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        utc = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidEntryError(f"not an ISO 8601 date or time in years 1-9999 UTC: {value[:40]!r}") from None
    return utc.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def normalise_digest(name: str, value: str) -> str:
    """A digest value checked against its name's length and lower-cased (comparisons ignore case)."""
    name = name.lower()
    if name not in DIGEST_LENGTHS:
        raise InvalidEntryError(f"unknown digest {name!r}; known: {', '.join(DIGEST_LENGTHS)}")
    hex_value = value.strip().lower()
    if not _HEX.fullmatch(hex_value) or len(hex_value) not in DIGEST_LENGTHS[name]:
        lengths = " or ".join(str(n) for n in DIGEST_LENGTHS[name])
        raise InvalidEntryError(f"{name} must be {lengths} hex characters, got {value[:80]!r}")
    return hex_value


def normalise_digests(digests: Mapping[str, str]) -> dict[str, str]:
    """Every digest of a mapping normalised; empty values are dropped (a file may lack AutoV1)."""
    return {name.lower(): normalise_digest(name, value) for name, value in digests.items() if value}


def check_choice(field_name: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else an InvalidEntryError naming the field."""
    if value not in choices:
        raise InvalidEntryError(f"{field_name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def is_entry_id(value: Any) -> TypeGuard[str]:
    """Whether `value` can be an entry id: 1-64 letters, digits, '.', '_', '-' (ours are "e" + 24 hex;
    a partner's arrive in bundles, and the HTTP API's paths take no other characters)."""
    return isinstance(value, str) and _ENTRY_ID.fullmatch(value) is not None


def check_text(field_name: str, value: str) -> str:
    """Free text the store keeps: anything but NUL, which PostgreSQL text cannot hold (so the
    same input is refused on every backend, with this one-line error, not a driver's)."""
    if not isinstance(value, str):
        raise InvalidEntryError(f"{field_name} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidEntryError(f"{field_name} contains a NUL character")
    return value


def check_list_name(name: str) -> str:
    """A list name: letters, digits, `.`, `_`, `-`; imported lists are named `publisher/list`."""
    if not _LIST_NAME.fullmatch(name):
        raise InvalidEntryError(f"list names are 1-64 letters, digits, '.', '_' or '-' (got {name[:80]!r})")
    return name


def check_publisher_name(name: str) -> str:
    """A publisher name: what a list name may be, without `/`, since an importer files the
    publisher's lists as `publisher/list` (a name that could not be imported is refused up front)."""
    if not _PUBLISHER_NAME.fullmatch(name):
        raise InvalidEntryError(
            f"publisher names are 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (got {name[:80]!r})"
        )
    return name


@dataclass(frozen=True)
class ListInfo:
    """A list ("bank"): its local name, who publishes it and, for imported lists, its name there."""

    name: str
    publisher: str
    description: str = ""
    created: str = ""
    origin_list: str | None = None  # the publisher's own name of an imported list; None when made here

    @property
    def imported(self) -> bool:
        return self.origin_list is not None


@dataclass(frozen=True)
class NewEntry:
    """What a caller supplies to add an entry; the store assigns id, list, timestamps and sequence.

    `id` is given only when an entry arrives from another platform (it keeps its publisher's id).
    `note` is sensitive (titles can name victims): it is never shown in repr, logs or exports by default.
    """

    category: str
    kind: str = "other"
    digests: Mapping[str, str] = field(default_factory=dict)
    fingerprint: bytes | None = field(default=None, repr=False)
    url: str | None = None
    domain: str | None = None
    source: str = ""
    evidence: str = "exact-file"
    first_seen: str | None = None
    expires: str | None = None
    note: str | None = field(default=None, repr=False)
    id: str | None = None
    status: str = "active"
    added: str | None = None

    def validated(self) -> NewEntry:
        """A copy with every field checked and normalised; raises InvalidEntryError."""
        check_choice("category", self.category, CATEGORIES)
        check_choice("kind", self.kind, ENTRY_KINDS)
        check_choice("evidence", self.evidence, EVIDENCE_TYPES)
        check_choice("status", self.status, STATUSES)
        digests = normalise_digests(self.digests)
        url = normalise_url(self.url) if self.url else None
        domain = listed_domain(self.domain) if self.domain else None
        if self.fingerprint is not None:
            parse_fingerprint(self.fingerprint)
        if not (digests or self.fingerprint or url or domain):
            raise InvalidEntryError("an entry needs at least one digest, a fingerprint, a URL or a domain")
        if (url or domain) and (digests or self.fingerprint):
            raise InvalidEntryError("an entry is either a model (digests, fingerprint) or a service (URL, domain)")
        if (url or domain) and self.category != "nudify-service":
            raise InvalidEntryError("URL and domain entries have category nudify-service")
        if self.category == "nudify-service" and not (url or domain):
            raise InvalidEntryError("category nudify-service is for URL and domain entries")
        if self.kind == "service" and not (url or domain):
            raise InvalidEntryError("kind service is for URL and domain entries; a model is a checkpoint, lora or other")
        if self.id is not None and not is_entry_id(self.id):
            raise InvalidEntryError(f"an entry id is 1-64 letters, digits, '.', '_' or '-' (got {self.id[:80]!r})")
        check_text("source", self.source)
        if self.note is not None:
            check_text("note", self.note)
        return NewEntry(
            category=self.category,
            kind="service" if (url or domain) else self.kind,
            digests=digests,
            fingerprint=self.fingerprint,
            url=url,
            domain=domain,
            source=self.source.strip(),
            evidence=self.evidence,
            first_seen=normalise_timestamp(self.first_seen) if self.first_seen else None,
            expires=normalise_timestamp(self.expires) if self.expires else None,
            note=self.note or None,
            id=self.id,
            status=self.status,
            added=normalise_timestamp(self.added) if self.added else None,
        )


@dataclass(frozen=True)
class Entry:
    """One listed model, URL or domain as stored, with the sequence number of its last change."""

    id: str
    list: str
    category: str
    kind: str
    digests: Mapping[str, str]
    source: str
    evidence: str
    added: str
    status: str
    seq: int
    fingerprint: bytes | None = field(default=None, repr=False)
    url: str | None = None
    domain: str | None = None
    first_seen: str | None = None
    expires: str | None = None
    origin: str | None = None  # the publisher it was imported from; None when listed here
    note: str | None = field(default=None, repr=False)

    def expired(self, now: str | None = None) -> bool:
        """Whether `expires` lies at or before `now` (default: the current UTC time)."""
        return self.expires is not None and self.expires <= (now or utc_now())

    def matchable(self, now: str | None = None) -> bool:
        """Retracted and expired entries never match; disputed ones do, with a flag."""
        return self.status != "retracted" and not self.expired(now)

    def to_json(self, *, include_note: bool = False) -> dict[str, Any]:
        """The entry as a JSON object (the fingerprint as its byte size; the note only on request)."""
        record: dict[str, Any] = {
            "entry_id": self.id,
            "list": self.list,
            "category": self.category,
            "kind": self.kind,
            "digests": dict(self.digests),
            "fingerprint_bytes": len(self.fingerprint) if self.fingerprint else 0,
            "url": self.url,
            "domain": self.domain,
            "source": self.source,
            "origin": self.origin,
            "evidence": self.evidence,
            "first_seen": self.first_seen,
            "added": self.added,
            "status": self.status,
            "expires": self.expires,
            "seq": self.seq,
        }
        if include_note:
            record["note"] = self.note
        return record


@dataclass(frozen=True)
class IndexRow:
    """What the matcher's in-memory indexes need of an entry (no notes, no fingerprint blob)."""

    seq: int
    status: str
    digests: Mapping[str, str]
    url: str | None
    domain: str | None
    codes: Mapping[str, bytes]  # the fingerprint's sign codes by component; empty without one


@dataclass(frozen=True)
class Event:
    """One append-only change: `action` is create-list, add, retract, dispute, confirm or import."""

    seq: int
    at: str
    action: str
    list: str
    entry_id: str | None = None
    actor: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Opinion:
    """A platform's view of an entry it did not publish: `dispute` (false positive) or `confirm`."""

    entry_id: str
    opinion: str
    by: str
    at: str
    reason: str = ""
    origin: str | None = None  # the entry's publisher, to whom the opinion may be exported
    seq: int = 0  # the event recording it (set by the store)


@dataclass(frozen=True)
class TrustedKey:
    """A publisher's Ed25519 public key in the local trust store and how far its lists are trusted."""

    name: str
    public_key: str  # "ed25519:" + base64 of the 32 raw bytes
    key_id: str
    level: str
    added: str


@dataclass(frozen=True)
class Match:
    """One list entry a subject matched, with the evidence for it.

    kind: the digest name, "fuzzy", "url" or "domain". score: 1.0 for equal digests, the fuzzy
    score (raw delta cosine clipped at 0) otherwise; a fuzzy match's `calibration` adds the
    cohort-normalised score and estimated false-match rate, `decision` whether to review or act. bits: how many bits of digest agreed (a 32-bit CRC32 or AutoV1
    agreement is weak evidence on its own). status: active or disputed (a disputed entry matches
    with this flag so a person reviews it). trust: "local" or the publisher's trust level.
    """

    entry_id: str
    list: str
    category: str
    source: str
    kind: str
    score: float
    status: str
    coefficient: float | None = None
    base: str | None = None
    origin: str | None = None
    trust: str = "local"
    evidence: str = ""
    bits: int | None = None
    digests: tuple[str, ...] = ()
    differing: tuple[str, ...] = ()  # shared digests whose listed value differs (a match on a stronger one)
    similarity: float | None = None
    calibration: CalibratedScore | None = None  # fuzzy only: normalised score and false-match estimate
    decision: str | None = None  # fuzzy only: "review" or "action" under the matcher's policy

    @property
    def identifies(self) -> bool:
        """Whether this match alone identifies the subject: a listed URL or domain, or digests
        agreeing on at least EXACT_DIGEST_BITS bits."""
        return self.kind in ("url", "domain") or (self.kind != "fuzzy" and (self.bits or 0) >= EXACT_DIGEST_BITS)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "entry_id": self.entry_id,
            "list": self.list,
            "category": self.category,
            "source": self.source,
            "kind": self.kind,
            "score": round(self.score, 6),
            "coefficient": None if self.coefficient is None else round(self.coefficient, 6),
            "base": self.base,
            "status": self.status,
            "origin": self.origin,
            "trust": self.trust,
            "evidence": self.evidence,
        }
        if self.bits is not None:
            record["bits"] = self.bits
            record["digests"] = list(self.digests)
        if self.differing:
            record["differing"] = list(self.differing)
        if self.similarity is not None:
            record["similarity"] = round(self.similarity, 6)
        if self.calibration is not None:
            calibration = self.calibration.to_json()
            record.update({k: calibration[k] for k in ("calibrated", "normalised", "false_match_rate", "false_match")})
            record["cohort_size"] = calibration["cohort_size"]
            record["decision"] = self.decision
        return record


@dataclass(frozen=True)
class MatchResult:
    """Every match of one subject (a file path or URL). "none" means no list matched, never "clean"."""

    subject: str
    matches: tuple[Match, ...] = ()
    problems: tuple[str, ...] = ()  # e.g. why a file could only be matched on its digests

    @property
    def verdict(self) -> str:
        """exact when a match identifies the subject (a URL, a domain, digests of ≥ 64 bits); near
        when all matches are fuzzy or weak digest agreements (for a person to review); none when
        nothing matched."""
        if any(m.identifies for m in self.matches):
            return "exact"
        return "near" if self.matches else "none"

    def to_json(self) -> dict[str, Any]:
        record = {"path": self.subject, "verdict": self.verdict, "matches": [m.to_json() for m in self.matches]}
        if self.problems:
            record["problems"] = list(self.problems)
        return record


@dataclass(frozen=True)
class BaseInfo:
    """A registered base model (its raw fingerprint's identity, without the sketches)."""

    name: str
    key_id: str
    key_check: str
    scheme: int
    tensors: int
    source: str
    added: str


@dataclass(frozen=True)
class BackgroundInfo:
    """A member of a base's background cohort, without its sketches."""

    id: str  # SHA-256 of the fingerprint bytes
    base: str
    kind: str
    key_id: str
    tensors: int
    source: str
    added: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "base": self.base, "kind": self.kind, "key_id": self.key_id, "tensors": self.tensors,
                "source": self.source, "added": self.added}


@dataclass(frozen=True)
class StoredApiKey:
    """An API key as the store keeps it: the SHA-256 of its secret, never the secret."""

    key_id: str
    secret_sha256: str = field(repr=False)
    name: str
    scopes: tuple[str, ...]
    rate_per_second: float | None
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class CrawlJobState:
    """The store's record of a resumable crawl into one output file (`crawler.job.CrawlJob`)."""

    id: int
    out_path: str
    input_sha256: str
    out_offset: int  # the output's length when URLs were last marked done
    finished_at: str | None
    mode: str | None = None  # the crawl's mode (search, host); None for jobs stored before it was recorded


@dataclass(frozen=True)
class CrawlTargetRow:
    """One URL of a crawl job, in input order (`context` is its JSON text)."""

    line: int
    url: str
    context: str


@dataclass(frozen=True)
class LeasedCrawlJob:
    """A crawl job submitted over the API: who submitted it, its crawl job, and how it ended (if it has)."""

    id: str
    key_id: str
    mode: str
    created_at: float
    crawl_job_id: int
    finished_at: float | None = None
    error: str | None = None
    lease_until: float | None = None
    cancelled_at: float | None = None

    def status(self, now: float) -> str:
        """cancelled, failed or done once finished; running while a lease is live at `now`; else queued."""
        if self.finished_at is not None:
            return "cancelled" if self.cancelled_at is not None else "failed" if self.error else "done"
        return "running" if self.lease_until is not None and self.lease_until > now else "queued"
