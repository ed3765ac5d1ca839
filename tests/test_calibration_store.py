"""Background cohorts persisted in the store: add, list, remove, load per key, idempotent imports."""

from __future__ import annotations

import pytest

from modelsieve.fingerprint.calibration import calibrate
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import BaseModel, FingerprintKey, fingerprint_tensors
from modelsieve.hashlists.background import add_background, list_background, load_cohorts, remove_background
from modelsieve.hashlists.db import open_database
from tests.calibration_fixtures import BASE, COHORT_SEEDS, KEY, SIZE, base, cohorts, family, tuned


def test_a_stored_cohort_calibrates_exactly_like_the_in_memory_one(tmp_path) -> None:
    db = open_database(tmp_path / "store.db")
    added = add_background(db, BASE, [tuned(s) for s in COHORT_SEEDS], sources=[f"tune-{s}" for s in COHORT_SEEDS])
    assert [a.source for a in added] == [f"tune-{s}" for s in COHORT_SEEDS] and {a.kind for a in added} == {"checkpoint"}
    db.conn.close()
    loaded = load_cohorts(open_database(tmp_path / "store.db"), KEY)
    assert set(loaded) == {BASE} and len(loaded[BASE]) == len(COHORT_SEEDS)
    stored, fresh = calibrate(tuned(10), tuned(1), loaded), calibrate(tuned(10), tuned(1), cohorts())
    # members travel as float16 fingerprints, so the scores agree closely, not bit for bit
    assert stored.calibrated and stored.normalised == pytest.approx(fresh.normalised, abs=0.05)


def test_adding_twice_changes_nothing_and_members_can_be_removed(tmp_path) -> None:
    db = open_database(tmp_path / "store.db")
    first = add_background(db, BASE, [tuned(100), tuned(101)])
    assert add_background(db, BASE, [tuned(100)]) == []
    assert {m.id for m in list_background(db, BASE)} == {m.id for m in first}
    remove_background(db, first[0].id[:12])
    assert [m.id for m in list_background(db)] == [first[1].id]
    with pytest.raises(ModelsieveError, match="no single background model"):
        remove_background(db, first[0].id)


def test_cohorts_load_only_for_their_key(tmp_path) -> None:
    db = open_database(tmp_path / "store.db")
    add_background(db, BASE, [tuned(100)])
    assert load_cohorts(db, FingerprintKey("other", b"another key of 16+ bytes")) == {}
    assert len(load_cohorts(db, KEY)[BASE]) == 1


def test_raw_fingerprints_other_bases_and_other_keys_are_refused(tmp_path) -> None:
    db = open_database(tmp_path / "store.db")
    with pytest.raises(ModelsieveError, match="delta"):
        add_background(db, BASE, [base().fingerprint])
    with pytest.raises(ModelsieveError, match="base"):
        add_background(db, "sdxl", [tuned(100)])
    add_background(db, BASE, [tuned(100)])
    other_key = FingerprintKey("other", b"another key of 16+ bytes")
    other_base = fingerprint_tensors(family().checkpoint(family().base), other_key)
    stranger = fingerprint_tensors(family().fine_tune(3, SIZE), other_key, [BaseModel(BASE, other_base)], require_base=True)
    with pytest.raises(ModelsieveError, match="key"):
        add_background(db, BASE, [stranger])
    assert len(list_background(db)) == 1
