"""The crawler's domain: what to check (CrawlTarget), what was found (Evidence) and what to do (Recommendation)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from modelsieve.hashlists.model import Match

Action = Literal["delist", "takedown", "review", "none", "error"]


def utc_now() -> str:
    """The current time as ISO-8601 UTC with milliseconds and a Z, as every timestamp in the evidence."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class CrawlTarget:
    """One URL to check, with the caller's context (echoed back) and its input line, if any."""

    url: str
    context: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass(frozen=True)
class Evidence:
    """Everything a recommendation rests on, so a person can verify it (or dispute it).

    `matches` holds every list entry that matched (the decisive one first) with its source, kind
    (digest name, "fuzzy", "url", "domain") and score; `basis` says what was compared: "url",
    "published" (digests the host publishes), "content" (digests or fingerprint of bytes read).
    """

    started_at: str
    finished_at: str
    matches: Sequence[Match] = ()
    basis: str | None = None
    provider: Mapping[str, Any] | None = None
    digests: Mapping[str, str] = field(default_factory=dict)
    file: Mapping[str, Any] = field(default_factory=dict)
    response: Mapping[str, Any] = field(default_factory=dict)
    requests: Sequence[Mapping[str, Any]] = ()
    robots: Sequence[Mapping[str, Any]] = ()  # what robots.txt said of each URL requested (see politeness.RobotsVerdict)
    bytes_read: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "matches": [m.to_json() for m in self.matches],
            "basis": self.basis,
            "provider": dict(self.provider) if self.provider is not None else None,
            "digests": dict(self.digests),
            "file": dict(self.file),
            "response": dict(self.response),
            "requests": [dict(r) for r in self.requests],
            "robots": [dict(r) for r in self.robots],
            "bytes_read": self.bytes_read,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True)
class Recommendation:
    """What to do about one URL and why. "none" means no list matched; there is no "clean"."""

    url: str
    final_url: str | None
    action: Action
    reason: str
    evidence: Evidence
    checked_at: str
    context: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "url": self.url,
            "final_url": self.final_url,
            "action": self.action,
            "reason": self.reason,
            "evidence": self.evidence.to_json(),
            "checked_at": self.checked_at,
        }
        if self.context:
            record["context"] = dict(self.context)
        return record

    def to_json_line(self) -> bytes:
        """The recommendation as one UTF-8 JSON Lines record, as crawl outputs hold it.

        Text that is not valid Unicode (lone surrogates: a host's undecodable header bytes, JSON
        escapes in an API answer or the input) is written as visible escapes, never a crash.
        """
        record = self.to_json()
        try:
            return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # rare: only then walk the record
            return (json.dumps(_visible(record), separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def visible_text(text: str) -> str:
    """`text` with lone surrogates spelt out: a surrogate-escaped byte as \\xNN, any other as \\udNNN."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _only_escaped_bytes(text) else "backslashreplace").decode(
            "utf-8", "backslashreplace"
        )
    return text


def _only_escaped_bytes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _visible(value: Any) -> Any:
    if isinstance(value, str):
        return visible_text(value)
    if isinstance(value, dict):
        return {visible_text(str(k)): _visible(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_visible(v) for v in value]
    return value
