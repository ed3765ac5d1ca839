"""The recommendation policy: which matches delist, take down, go to review, or change nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.crawler.policy import HOTLINE_NOTE, PolicyConfig, decide, judge
from modelsieve.hashlists.model import Match

SEARCH = PolicyConfig(mode="search")
HOST = PolicyConfig(mode="host")


def match(category: str = "2c", kind: str = "sha256", score: float = 1.0, bits: int | None = 256, status: str = "active") -> Match:
    return Match(
        entry_id="e-test",
        list="demo/list",
        category=category,
        source="unit test",
        kind=kind,
        score=score,
        status=status,
        bits=bits if kind not in ("fuzzy", "url", "domain") else None,
        digests=(kind,) if kind not in ("fuzzy", "url", "domain") else (),
    )


def test_exact_2c_matches_delist_for_search_engines_and_take_down_for_hosts() -> None:
    assert decide([match()], SEARCH).action == "delist"
    host = decide([match()], HOST)
    assert host.action == "takedown" and HOTLINE_NOTE in host.reason
    assert "e-test" in host.reason and "demo/list" in host.reason and "sha256" in host.reason


def test_strong_near_copies_act_and_weaker_ones_go_to_review() -> None:
    assert decide([match(kind="fuzzy", score=0.95)], SEARCH).action == "delist"
    assert decide([match(kind="fuzzy", score=0.7)], SEARCH).action == "review"
    below = decide([match(kind="fuzzy", score=0.2)], SEARCH)
    assert below.action == "none" and below.match is None


@pytest.mark.parametrize("category", ["1", "2a", "2b"])
def test_other_categories_go_to_review(category: str) -> None:
    decision = decide([match(category=category)], HOST)
    assert decision.action == "review" and f"category {category}" in decision.reason


def test_weak_digest_agreement_and_disputed_entries_go_to_review() -> None:
    assert decide([match(kind="crc32", bits=32)], SEARCH).action == "review"
    disputed = decide([match(status="disputed")], SEARCH)
    assert disputed.action == "review" and "disputed" in disputed.reason


def test_listed_nudify_services_are_delisted_without_a_hotline_note() -> None:
    assert decide([match(category="nudify-service", kind="domain")], SEARCH).action == "delist"
    host = decide([match(category="nudify-service", kind="url")], HOST)
    assert host.action == "takedown" and HOTLINE_NOTE not in host.reason


def test_no_match_is_none_and_never_clean() -> None:
    decision = decide([], SEARCH)
    assert decision.action == "none" and "clean" not in decision.reason.lower()


def test_thresholds_are_configurable_and_checked() -> None:
    strict = PolicyConfig(strong_score=0.99, review_score=0.9)
    assert decide([match(kind="fuzzy", score=0.95)], strict).action == "review"
    assert decide([match(kind="crc32", bits=32)], PolicyConfig(min_digest_bits=32)).action == "delist"
    with pytest.raises(ValueError):
        PolicyConfig(review_score=0.95, strong_score=0.9)
    with pytest.raises(ValueError):
        PolicyConfig(mode="nuke")  # type: ignore[arg-type]


MATCHES = st.builds(
    match,
    category=st.sampled_from(["1", "2a", "2b", "2c", "nudify-service"]),
    kind=st.sampled_from(["sha256", "autov3", "crc32", "fuzzy", "url", "domain"]),
    score=st.floats(0, 1),
    bits=st.sampled_from([32, 40, 48, 256]),
    status=st.sampled_from(["active", "disputed"]),
)


@given(st.lists(MATCHES, max_size=6), st.sampled_from([SEARCH, HOST]))
@settings(max_examples=200, deadline=None)
def test_the_decision_is_the_strongest_single_match_and_never_mixes_modes(matches: list[Match], config: PolicyConfig) -> None:
    decision = decide(matches, config)
    singles = [judge(m, config).action for m in matches]
    acting = "delist" if config.mode == "search" else "takedown"
    assert decision.action in ("none", "review", acting)
    if acting in singles:
        assert decision.action == acting
    elif "review" in singles:
        assert decision.action == "review"
    else:
        assert decision.action == "none"
    assert (decision.match is None) == (decision.action == "none")
    if decision.match is not None:
        assert decision.match in matches and decision.match.entry_id in decision.reason
