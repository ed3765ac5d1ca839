"""The matcher with a background cohort: calibrated evidence on every fuzzy match, siblings dropped."""

from __future__ import annotations

from modelsieve.fingerprint import synthetic as syn
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.calibration_fixtures import KEY, SIZE, cohorts, family, fp, tuned


def listed_entry(store: SQLiteStore) -> str:
    entry = store.add_entry("main", NewEntry(category="2c", kind="checkpoint", fingerprint=tuned(1).to_bytes(), evidence="fuzzy"))
    assert entry is not None
    return entry.id


def test_calibrated_matches_carry_normalised_score_and_false_match_rate(store: SQLiteStore) -> None:
    entry_id = listed_entry(store)
    matcher = Matcher(store, fingerprint_key=KEY, cohorts=cohorts())
    [match] = matcher.match_fingerprint(fp(syn.resave(family().fine_tune(1, SIZE), "fp16")))
    assert (match.entry_id, match.kind, match.decision) == (entry_id, "fuzzy", "action")
    record = match.to_json()
    assert record["calibrated"] is True and record["cohort_size"] == 10 and record["similarity"] > 0.99
    assert record["normalised"] > 10 and record["false_match_rate"] < 1e-6 and record["false_match"].startswith("≤ 1 in 10^")


def test_a_correlated_sibling_matches_uncalibrated_but_not_once_a_cohort_calibrates_it(store: SQLiteStore) -> None:
    listed_entry(store)
    sibling = tuned(12)
    [uncalibrated] = Matcher(store, fingerprint_key=KEY).match_fingerprint(sibling)
    record = uncalibrated.to_json()
    assert uncalibrated.decision == "review" and record["calibrated"] is False and record["false_match"] == "uncalibrated"
    assert Matcher(store, fingerprint_key=KEY, cohorts=cohorts()).match_fingerprint(sibling) == []


def test_with_a_cohort_the_matcher_reports_an_unbiased_merge_weight(store: SQLiteStore) -> None:
    listed_entry(store)
    f = family()
    merged = fp(syn.weighted_sum(f.fine_tune(1, SIZE), f.fine_tune(7, SIZE), 0.3))  # the partner shares the benign direction
    [plain] = Matcher(store, fingerprint_key=KEY).match_fingerprint(merged)
    [calibrated] = Matcher(store, fingerprint_key=KEY, cohorts=cohorts()).match_fingerprint(merged)
    assert abs(calibrated.coefficient - 0.3) <= 0.1
    assert abs(calibrated.coefficient - 0.3) < abs(plain.coefficient - 0.3)  # the shared direction inflated it
