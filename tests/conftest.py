"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsieve.hashlists.sqlite_store import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A fresh SQLite store in a real file, with one local list called "main"."""
    with SQLiteStore(tmp_path / "store.db") as opened:
        opened.create_list("main", publisher="platform-a")
        yield opened
