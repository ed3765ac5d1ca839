"""From matches to an action: the policy a search engine (delist) or a model host (takedown) applies.

- Category 2c (models made to produce child sexual abuse imagery) or a listed nudify service,
  matched exactly (enough digest bits, a listed URL or domain) or as a strong near-copy:
  search mode → `delist`; host mode → `takedown`, and for 2c: preserve the evidence and report
  to your hotline, annotated as generative-AI.
- Weaker near matches, weak digest agreement (CRC32 / AutoV1 alone), disputed entries and
  categories 1, 2a and 2b → `review` by a person.
- No match → `none` ("no list matched"; never "clean").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from modelsieve.crawler.model import Action
from modelsieve.fingerprint.fuzzy import DEFAULT_THRESHOLD
from modelsieve.hashlists.model import EXACT_DIGEST_BITS, Match

Mode = Literal["search", "host"]
ACTIONABLE_CATEGORIES = frozenset({"2c", "nudify-service"})
HOTLINE_NOTE = "preserve evidence and report to your hotline, annotated as generative-AI"
_RANK = {"none": 0, "review": 1, "delist": 2, "takedown": 2}


@dataclass(frozen=True)
class PolicyConfig:
    """Who is asking and how strong a match must be to act without a person."""

    mode: Mode = "search"
    strong_score: float = 0.9  # near-copy score at or above which a fuzzy match acts like an exact one
    review_score: float = DEFAULT_THRESHOLD  # below: only listed in the evidence (default: every match the matcher reports)
    min_digest_bits: int = EXACT_DIGEST_BITS  # digest agreement weaker than this (crc32, autov1: 32 bits) goes to review

    def __post_init__(self) -> None:
        if self.mode not in ("search", "host"):
            raise ValueError(f"mode must be search or host, not {self.mode!r}")
        if not 0 <= self.review_score <= self.strong_score <= 1:
            raise ValueError("scores must satisfy 0 <= review_score <= strong_score <= 1")


@dataclass(frozen=True)
class Decision:
    """An action, the one-line reason for it, and the match it rests on (None for "none")."""

    action: Action
    reason: str
    match: Match | None


def strength(match: Match, config: PolicyConfig) -> str:
    """"exact", "strong", "weak" or "below" (too weak to act on) for one match."""
    if match.kind == "fuzzy":
        if match.score >= config.strong_score:
            return "strong"
        return "weak" if match.score >= config.review_score else "below"
    if match.kind in ("url", "domain"):
        return "exact"
    return "exact" if (match.bits or 0) >= config.min_digest_bits else "weak"


def _describe(match: Match, grade: str) -> str:
    how = {
        "url": "listed URL",
        "domain": "listed domain",
        "fuzzy": f"near-copy (score {match.score:.3f})",
    }.get(match.kind, f"{match.kind} digest ({match.bits or 0} bits)")
    if grade == "exact" and match.kind not in ("url", "domain"):
        how = f"exact {how}"
    return f"{how} of entry {match.entry_id} in list {match.list!r} (category {match.category}, source {match.source})"


def judge(match: Match, config: PolicyConfig) -> Decision:
    """The action one match calls for on its own."""
    grade = strength(match, config)
    if grade == "below":
        return Decision("none", "", None)
    described = _describe(match, grade)
    if match.status == "disputed":
        return Decision("review", f"{described}; the entry is disputed: a person must review", match)
    if grade == "weak":
        return Decision("review", f"{described}: too weak to act on alone, a person must review", match)
    if match.category not in ACTIONABLE_CATEGORIES:
        return Decision("review", f"{described}: category {match.category} calls for review by a person", match)
    if config.mode == "search":
        return Decision("delist", f"{described}: delist from search results", match)
    note = f"; {HOTLINE_NOTE}" if match.category == "2c" else ""
    return Decision("takedown", f"{described}: take the file down{note}", match)


def decide(matches: Sequence[Match], config: PolicyConfig) -> Decision:
    """The strongest action any match calls for (the first such match in the given order decides)."""
    best = Decision("none", "no list matched (this is not a statement that the file is harmless)", None)
    for match in matches:
        decision = judge(match, config)
        if _RANK[decision.action] > _RANK[best.action]:
            best = decision
    return best
