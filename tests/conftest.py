"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsieve.hashlists.store import Store, open_store
from tests.store_backends import BACKENDS, StoreLocations


@pytest.fixture(params=BACKENDS)
def store_locations(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreLocations]:
    """Fresh store locations, once per backend (SQLite files, PostgreSQL schemas)."""
    locations = StoreLocations(request.param, tmp_path)
    yield locations
    locations.drop()


@pytest.fixture
def store(store_locations: StoreLocations) -> Iterator[Store]:
    """A fresh store (SQLite file or PostgreSQL schema), with one local list called "main"."""
    with open_store(store_locations.new()) as opened:
        opened.create_list("main", publisher="platform-a")
        yield opened
