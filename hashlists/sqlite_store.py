"""The embedded store backend: one SQLite file in WAL mode (readers never block the import writer).

Two connections: the writer runs every write and every read made inside a transaction (so a
transaction sees its own uncommitted rows); a read-only connection serves the reads made outside
one, so lookups keep answering from the last committed state while a long bundle import holds
the writer. The queries and schema are shared with the other backends (`sql_store.py`). An
embedded store has one user, so opening it also applies missing migrations.

A store file this process cannot write (a read-only mount, another user's file) opens read-only:
matching works, every change is refused with one line.
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
from modelsieve.hashlists.errors import SchemaError, StoreUnavailableError
from modelsieve.hashlists.sql_store import SCHEMA_VERSION, Dialect, Row, SQLStore


class SQLiteStore(SQLStore):
    """The Store on one SQLite file; thread-safe (a writer and a reader connection, each behind a lock)."""

    dialect = Dialect(blob="BLOB", integer="INTEGER", seq_key="INTEGER PRIMARY KEY")
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, upgrade: bool = True, busy_timeout: float = 30.0, existing: bool = False,
        read_only: bool | None = None,
    ) -> None:
        """`busy_timeout`: how long a write waits for another process's write transaction to end;
        `existing`: refuse to start a new store where there is none; `read_only`: open an existing
        store for reading only (None: when this process cannot write the file or its folder)."""
        target = Path(path) if path is not None else default_db_path()
        if existing and not target.is_file():
            raise StoreUnavailableError(f"no store at {target}: check --db, or make one with `modelsieve list create`")
        self._busy_timeout = busy_timeout
        self._path = str(path) if path is not None else "default store"
        self._lock = threading.RLock()
        self._local = threading.local()  # .depth: how deep this thread is in transaction()
        self._read_lock = threading.Lock()
        if read_only is None:
            read_only = target.is_file() and not (os.access(target, os.W_OK) and os.access(target.parent, os.W_OK))
        elif read_only and not target.is_file():
            raise StoreUnavailableError(f"no store at {target} to open read-only")
        self.read_only = read_only
        if self.read_only:
            self._conn = self._reader = _connect_unwritable(target)
            try:
                self._check_schema_read_only()
            except BaseException:
                self._conn.close()
                raise
            return
        self._conn = _connect(target, timeout=busy_timeout, create_folder=path is None)
        try:
            self._migrate(upgrade=upgrade)
            self._reader = _connect(target, read_only=True, timeout=busy_timeout)  # after the migrations: WAL and schema exist
        except BaseException:
            self._conn.close()
            raise

    @property
    def location(self) -> str:
        return self._path

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._conn.close()  # last: the writer checkpoints the WAL into the file

    def _check_schema_read_only(self) -> None:
        """What `_migrate` checks, without writing: a read-only store must have the current schema."""
        try:
            current = self._query("SELECT coalesce(max(version), 0) AS version FROM schema_version")[0]["version"]
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot read the store at {self._path}: {exc}") from None
        if current != SCHEMA_VERSION:
            fix = "upgrade modelsieve" if current > SCHEMA_VERSION else "run `modelsieve db upgrade` where it is writable"
            raise SchemaError(
                f"the store at {self._path} is read-only here and has schema version {current}, "
                f"this modelsieve needs {SCHEMA_VERSION}: {fix}"
            )
        self.upgraded_from = self.schema_version = current

    def _refuse_write(self) -> None:
        if self.read_only:
            raise StoreUnavailableError(
                f"the store at {self._path} is read-only here (a read-only mount, or another user's file): "
                "it can be matched against, not changed"
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            depth = getattr(self._local, "depth", 0)
            if depth == 0:
                self._refuse_write()
                self._begin()
            self._local.depth = depth + 1
            try:
                yield
            except BaseException:
                self._local.depth = depth
                if depth == 0:
                    self._conn.execute("ROLLBACK")
                raise
            self._local.depth = depth
            if depth == 0:
                self._conn.execute("COMMIT")

    def _begin(self) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # "database is locked": another process writes
            raise StoreUnavailableError(
                f"the store at {self._path} is busy: another process held its write lock for over "
                f"{self._busy_timeout:g} s ({exc}); try again when that import or change has finished"
            ) from None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Inside this thread's transaction: on the writer (it sees its own writes); else on the reader."""
        if getattr(self._local, "depth", 0):
            return super()._query(sql, params)
        with self._read_lock:
            return self._reader.execute(sql, tuple(params)).fetchall()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[Row], int]:
        self._refuse_write()
        with self._lock:
            cursor = self._conn.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

    def _execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._refuse_write()
        with self._lock:
            self._conn.executemany(sql, rows)


def _connect(target: Path, *, read_only: bool = False, timeout: float = 30.0, create_folder: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode (readers never block the writer), foreign keys on, explicit transactions.

    A missing file becomes a new store, but only the default store's folder is created: a store
    named in a folder that does not exist (a typo in `--db`) is refused rather than started empty,
    where every lookup would quietly answer "none".

    sqlite-utils opens the file and switches it to WAL; schema and queries are the SQL shared with
    the PostgreSQL backend (`sql_store.py`), so the two backends cannot drift apart. `read_only`
    opens an existing WAL file with `mode=ro`: a write sent there by mistake fails loudly instead
    of committing outside the writer's transaction.
    """
    try:
        if read_only:
            uri = f"{target.resolve().as_uri()}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False, isolation_level=None)
        else:
            if create_folder:
                target.parent.mkdir(parents=True, exist_ok=True)
            elif not target.parent.is_dir():
                raise StoreUnavailableError(f"cannot open the store at {target}: no folder {target.parent}")
            connection = sqlite3.connect(target, timeout=timeout, check_same_thread=False, isolation_level=None)
            sqlite_utils.Database(connection).enable_wal()
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA synchronous=NORMAL")
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA cache_size = -131072")  # 128 MiB: bulk imports touch random index pages
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailableError(f"cannot open the store at {target}: {exc}") from None
    return connection


def _connect_unwritable(target: Path) -> sqlite3.Connection:
    """A read-only connection to a store file this process cannot write.

    `mode=ro` reads a WAL store whose writer is live (its -shm file exists). When it cannot (no
    -shm, which a read-only mount cannot create) and no write-ahead log holds unmerged changes,
    nobody has the file open for writing, so it is opened `immutable` (no locking at all).
    """
    base = target.resolve().as_uri()
    connection: sqlite3.Connection | None = None
    try:
        connection = sqlite3.connect(f"{base}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.Error as exc:
        if connection is not None:
            connection.close()
        wal = target.with_name(target.name + "-wal")
        if wal.exists() and wal.stat().st_size:
            raise StoreUnavailableError(
                f"cannot read the store at {target}: it is read-only here and its write-ahead log {wal.name} "
                f"holds changes not merged into it ({exc}); open it once where it is writable"
            ) from None
        try:
            connection = sqlite3.connect(f"{base}?mode=ro&immutable=1", uri=True, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as second:
            raise StoreUnavailableError(f"cannot open the store at {target}: {second}") from None
    connection.row_factory = sqlite3.Row
    return connection
