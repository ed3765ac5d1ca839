"""The matcher's cheap scoring path (one pair_statistics, no breakdowns, cached parsed fingerprints)
gives what the full path gives."""

from __future__ import annotations

import dataclasses

import numpy as np

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.calibration import assess, calibrate, cohort_for
from modelsieve.fingerprint.fuzzy import Fingerprint, compare, fingerprint_tensors
from modelsieve.fingerprint.scoring import pair_statistics
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.calibration_fixtures import SIZE, cohorts, family, fp, tuned
from tests.hashlists_fixtures import lora_arrays, lora_fingerprint, merged_lora_arrays


def test_shared_statistics_and_no_breakdown_change_no_score() -> None:
    listed = tuned(1)
    for query in (fp(syn.resave(family().fine_tune(1, SIZE), "fp16")), tuned(12), fp(syn.weighted_sum(family().fine_tune(1, SIZE), family().fine_tune(30, SIZE), 0.3))):
        full = compare(query, listed)
        statistics = pair_statistics(query, listed)
        cheap = compare(query, listed, breakdown=False, statistics=statistics)
        assert full.components and full.blocks and not cheap.components and not cheap.blocks
        assert dataclasses.replace(full, components={}, blocks={}) == cheap
        for background in ({}, cohorts()):
            assert calibrate(query, listed, background, statistics=statistics) == calibrate(query, listed, background)


def test_assess_equals_compare_and_calibrate_called_apart() -> None:
    """assess computes the statistics, cohort and raw similarity once; nothing it returns may differ."""
    lora_query = fingerprint_tensors(merged_lora_arrays(lora_arrays(1), lora_arrays(2), 0.5, 0.5))
    calibrated = ({}, cohorts())
    pairs = [(fp(syn.resave(family().fine_tune(1, SIZE), "fp16")), tuned(1), calibrated), (tuned(12), tuned(1), calibrated),
             (lora_query, lora_fingerprint(1), ({},))]  # the LoRA fixtures use another key than the cohort
    for query, listed, options in pairs:
        for background in options:
            cohort = cohort_for(query, listed, background)
            for breakdown in (True, False):
                apart = compare(query, listed, breakdown=breakdown, background=cohort.background if cohort else None)
                assert assess(query, listed, background, breakdown=breakdown) == (apart, calibrate(query, listed, background))


def test_the_parsed_fingerprint_cache_never_serves_a_replaced_fingerprint(store: SQLiteStore) -> None:
    [entry] = [store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(1).to_bytes()))]
    assert entry is not None
    matcher = Matcher(store, refresh_interval=0)
    query = lora_fingerprint(1, dtype=np.float16)
    first = matcher.match_fingerprint(query)
    assert [m.entry_id for m in first] == [entry.id] and matcher.match_fingerprint(query) == first  # second call: cached
    halfway = fingerprint_tensors(merged_lora_arrays(lora_arrays(1), lora_arrays(2), 0.5, 0.5))
    store.add_entries("main", [NewEntry(id=entry.id, category="2c", kind="lora", fingerprint=halfway.to_bytes())], replace=True)
    [replaced] = matcher.match_fingerprint(query)
    assert replaced.entry_id == entry.id and replaced.similarity == compare(query, Fingerprint.from_bytes(halfway.to_bytes())).similarity < first[0].similarity
