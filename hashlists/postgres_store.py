"""The server store backend: PostgreSQL through psycopg 3 and a connection pool, shared by replicas.

Same schema and queries as the embedded store (`sql_store.py`). Writers take a transaction-level
advisory lock for the store (its schema), so sequence numbers are handed out and committed in
order: a reader that sees seq N has every change up to N, which is what lets every replica's
matcher refresh from the event sequence alone. Reads need no lock and never wait for an import.

A store created now gets the current schema; an older one is migrated only by
`modelsieve db upgrade` (one replica, on purpose), never by replicas racing at start-up.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from modelsieve.hashlists.errors import StoreUnavailableError
from modelsieve.hashlists.sql_store import Dialect, Row, SQLStore

# One writer at a time per store; the key is the store's schema, so stores in other schemas of
# the same database (tests, tenants) never wait for each other.
_WRITER_LOCK = "SELECT pg_advisory_xact_lock(hashtext('modelsieve.store:' || current_schema()))"


def describe_dsn(dsn: str) -> str:
    """A connection URI as `postgresql://user@host:port/dbname`, without password or options."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable address)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host') or 'localhost'}{port}/{parts.get('dbname') or ''}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class PostgresStore(SQLStore):
    """The Store on a PostgreSQL database; thread-safe (one pooled connection per transaction)."""

    dialect = Dialect(blob="BYTEA", integer="BIGINT", seq_key="BIGINT PRIMARY KEY")
    integrity_errors = (psycopg.errors.IntegrityError,)

    def __init__(self, dsn: str, *, upgrade: bool = False, pool_size: int = 4, connect_timeout: float = 5.0) -> None:
        self._location = describe_dsn(dsn)
        try:
            psycopg.connect(dsn, connect_timeout=max(1, round(connect_timeout))).close()
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot reach the PostgreSQL store at {self._location}: {_first_line(exc)}") from None
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            timeout=30,
            open=True,
            name="modelsieve-store",
        )
        self._local = threading.local()
        try:
            self._migrate(upgrade=upgrade)
        except BaseException:
            self._pool.close()
            raise

    @property
    def location(self) -> str:
        return self._location

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if getattr(self._local, "connection", None) is not None:
            yield  # nested: joins the thread's outermost transaction
            return
        with self._pool.connection() as connection, connection.transaction():
            connection.execute(_WRITER_LOCK)
            self._local.connection = connection
            try:
                yield
            finally:
                self._local.connection = None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Row]]:
        current = getattr(self._local, "connection", None)
        if current is not None:
            yield current
        else:
            with self._pool.connection() as connection:
                yield connection

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[Row], int]:
        with self._connection() as connection:
            cursor = connection.execute(sql.replace("?", "%s"), tuple(params))
            return (cursor.fetchall() if cursor.description else []), cursor.rowcount

    def _execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._connection() as connection:
            connection.cursor().executemany(sql.replace("?", "%s"), rows)
