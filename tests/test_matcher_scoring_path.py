"""The matcher's cheap scoring path (one pair_statistics, no breakdowns) gives what the full path gives."""

from __future__ import annotations

import dataclasses

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.calibration import calibrate
from modelsieve.fingerprint.fuzzy import compare
from modelsieve.fingerprint.scoring import pair_statistics
from tests.calibration_fixtures import SIZE, cohorts, family, fp, tuned


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
