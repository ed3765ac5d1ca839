"""Background cohorts persisted in the store (every backend): add, list, remove, load per key, idempotent imports."""

from __future__ import annotations

import numpy as np
import pytest

from modelsieve.fingerprint.calibration import calibrate
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import BaseModel, FingerprintKey, fingerprint_tensors
from modelsieve.hashlists.store import Store, open_store
from tests.store_backends import StoreLocations
from tests.calibration_fixtures import BASE, COHORT_SEEDS, KEY, SIZE, base, cohorts, family, fp, tuned


def test_a_stored_cohort_calibrates_exactly_like_the_in_memory_one(store_locations: StoreLocations) -> None:
    location = store_locations.new()
    with open_store(location) as store:
        added = store.add_background(BASE, [tuned(s) for s in COHORT_SEEDS], sources=[f"tune-{s}" for s in COHORT_SEEDS])
    assert [a.source for a in added] == [f"tune-{s}" for s in COHORT_SEEDS] and {a.kind for a in added} == {"checkpoint"}
    with open_store(location) as store:
        loaded = store.cohorts(KEY)
    assert set(loaded) == {BASE} and len(loaded[BASE]) == len(COHORT_SEEDS)
    stored, fresh = calibrate(tuned(10), tuned(1), loaded), calibrate(tuned(10), tuned(1), cohorts())
    # members travel as float16 fingerprints, so the scores agree closely, not bit for bit
    assert stored.calibrated and stored.normalised == pytest.approx(fresh.normalised, abs=0.05)


def test_adding_twice_changes_nothing_and_members_can_be_removed(store: Store) -> None:
    first = store.add_background(BASE, [tuned(100), tuned(101)])
    assert store.add_background(BASE, [tuned(100)]) == []
    assert {m.id for m in store.list_background(BASE)} == {m.id for m in first}
    store.remove_background(first[0].id[:12])
    assert [m.id for m in store.list_background()] == [first[1].id]
    with pytest.raises(ModelsieveError, match="no single background model"):
        store.remove_background(first[0].id)


def test_cohorts_load_only_for_their_key(store: Store) -> None:
    store.add_background(BASE, [tuned(100)])
    assert store.cohorts(FingerprintKey("other", b"another key of 16+ bytes")) == {}
    assert len(store.cohorts(KEY)[BASE]) == 1


def test_raw_fingerprints_other_bases_and_other_keys_are_refused(store: Store) -> None:
    with pytest.raises(ModelsieveError, match="delta"):
        store.add_background(BASE, [base().fingerprint])
    with pytest.raises(ModelsieveError, match="base"):
        store.add_background("sdxl", [tuned(100)])
    store.add_background(BASE, [tuned(100)])
    other_key = FingerprintKey("other", b"another key of 16+ bytes")
    other_base = fingerprint_tensors(family().checkpoint(family().base), other_key)
    stranger = fingerprint_tensors(family().fine_tune(3, SIZE), other_key, [BaseModel(BASE, other_base)], require_base=True)
    with pytest.raises(ModelsieveError, match="key"):
        store.add_background(BASE, [stranger])
    assert len(store.list_background()) == 1


def test_members_that_change_nothing_are_refused_whoever_adds_them(store: Store) -> None:
    """The base itself, or its fp16 re-save, as a "fine-tune": no tensor of its delta exceeds rounding
    noise. The CLI refused it by its distance to the base; the store now refuses it for every caller
    (a partner's background bundle too), and the other members of the call are not added either."""
    tensors = family().checkpoint(family().base)
    itself, resaved = fp(tensors), fp({name: array.astype(np.float16) for name, array in tensors.items()})
    for member in (itself, resaved):
        with pytest.raises(ModelsieveError, match="changes nothing beyond rounding noise"):
            store.add_background(BASE, [tuned(100), member])
    assert store.list_background() == []
    store.add_background(BASE, [tuned(100)])  # the lightest synthetic fine-tune is a change
