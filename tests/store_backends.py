"""Store locations for the contract suite: every store test runs on SQLite and on PostgreSQL.

PostgreSQL tests connect to `$MODELSIEVE_TEST_POSTGRES` (default: the role and database that
`.ci/postgres` creates) and give each store its own schema, dropped afterwards, so tests never
see each other's rows. Where PostgreSQL is unreachable they are skipped with the reason shown
(`pytest -ra`), except under CI (`$CI` set), where that is a failure: CI must test both backends.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")
POSTGRES_ENV = "MODELSIEVE_TEST_POSTGRES"
DEFAULT_POSTGRES = "postgresql://modelsieve:modelsieve@127.0.0.1:5432/modelsieve_test"


def postgres_dsn() -> str:
    """The test database's URI, or a skip (a failure under CI) saying why it cannot be used."""
    dsn = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    try:
        import psycopg

        psycopg.connect(dsn, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any reason to be unusable is reported the same way
        reason = f"PostgreSQL test database unreachable ({' '.join(str(exc).split())[:200]}); start it with `bash .ci/postgres`"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} — CI must run the PostgreSQL contract tests", pytrace=False)
        pytest.skip(reason)
    return dsn


class StoreLocations:
    """Fresh store locations on one backend: SQLite files in a temporary folder, or PostgreSQL schemas."""

    def __init__(self, backend: str, folder: Path) -> None:
        self.backend = backend
        self._folder = folder
        self._dsn = postgres_dsn() if backend == "postgresql" else ""
        self._schemas: list[str] = []

    def new(self, name: str = "store") -> str:
        """The location of a new, empty store."""
        if self.backend == "sqlite":
            return str(self._folder / f"{name}.db")
        import psycopg

        schema = f"test_{name.replace('-', '_')}_{secrets.token_hex(6)}"
        with psycopg.connect(self._dsn, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        self._schemas.append(schema)
        return f"{self._dsn}{'&' if '?' in self._dsn else '?'}options=-csearch_path%3D{schema}"

    def drop(self) -> None:
        """Remove the PostgreSQL schemas made for the test."""
        if not self._schemas:
            return
        import psycopg

        with psycopg.connect(self._dsn, autocommit=True) as connection:
            for schema in self._schemas:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
