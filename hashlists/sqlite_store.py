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
from pathlib import Path
from typing import Any

import sqlite_utils

from modelsieve.hashlists.db import default_db_path
from modelsieve.hashlists.errors import StoreUnavailableError
from modelsieve.hashlists.sql_store import Dialect, Row, SQLStore


class SQLiteStore(SQLStore):
    """The Store on one SQLite file; thread-safe (one connection behind a lock)."""

    dialect = Dialect(blob="BLOB", integer="INTEGER", seq_key="INTEGER PRIMARY KEY")
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | os.PathLike[str] | None = None, *, upgrade: bool = True) -> None:
        self._conn = _connect(Path(path) if path is not None else default_db_path())
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


def _connect(target: Path) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer), foreign keys on, explicit transactions.

    sqlite-utils opens the file and switches it to WAL; schema and queries are the SQL shared with
    the PostgreSQL backend (`sql_store.py`), so the two backends cannot drift apart.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(target, timeout=30, check_same_thread=False, isolation_level=None)
        database = sqlite_utils.Database(connection)
        database.enable_wal()
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA cache_size = -131072")  # 128 MiB: bulk imports touch random index pages
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailableError(f"cannot open the store at {target}: {exc}") from None
    return connection
