"""The embedded store backend: one SQLite file in WAL mode (readers never block the import writer).

The queries and schema are shared with the other backends (`sql_store.py`). An embedded store
has one user, so opening it also applies missing migrations.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from modelsieve.fingerprint.calibration import Cohort
from modelsieve.fingerprint.fuzzy import BaseModel, FingerprintKey
from modelsieve.hashlists.background import load_cohorts
from modelsieve.hashlists.bases import load_bases
from modelsieve.hashlists.db import open_database
from modelsieve.hashlists.sql_store import Dialect, Row, SQLStore


class SQLiteStore(SQLStore):
    """The Store on one SQLite file; thread-safe (one connection behind a lock)."""

    dialect = Dialect(blob="BLOB", integer="INTEGER", seq_key="INTEGER PRIMARY KEY")
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | os.PathLike[str] | None = None, *, upgrade: bool = True) -> None:
        self._db = open_database(path)
        self._conn = self._db.conn
        self._conn.isolation_level = None  # transactions are explicit: see transaction()
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA cache_size = -131072")  # 128 MiB: bulk imports touch random index pages
        self._path = str(path) if path is not None else "default store"
        self._lock = threading.RLock()
        self._depth = 0
        self._migrate(upgrade=upgrade)

    @property
    def location(self) -> str:
        return self._path

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._conn.execute("COMMIT")

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[Row], int]:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

    def _execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.executemany(sql, rows)

    # -- reference models -------------------------------------------------------------------------
    def bases(self, key: FingerprintKey) -> list[BaseModel]:
        return load_bases(self._db, key)

    def cohorts(self, key: FingerprintKey) -> dict[str, Cohort]:
        return load_cohorts(self._db, key)
