"""Schema versions on every backend: created current, older upgraded (PostgreSQL only when told), newer refused."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from modelsieve.api.cli import main
from modelsieve.hashlists.errors import SchemaError, StoreUnavailableError
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sql_store import SCHEMA_VERSION, migrations
from modelsieve.hashlists.sqlite_store import SQLiteStore
from modelsieve.hashlists.store import open_store
from tests.store_backends import StoreLocations


def run_sql(location: str, statements: list[str]) -> list[tuple]:
    """Run statements on the store's database directly (as an older or newer modelsieve would)."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as connection:
            cursors = [connection.execute(statement) for statement in statements]
            return [tuple(row) for cursor in cursors if cursor.description for row in cursor.fetchall()]
    connection = sqlite3.connect(location)
    try:
        return [tuple(row) for s in statements for row in connection.execute(s).fetchall()]
    finally:
        connection.commit()
        connection.close()


def make_version_1(locations: StoreLocations) -> str:
    """A store as the first schema version left it, holding one entry."""
    location = locations.new("old")
    store = open_store(location)
    dialect = store.dialect  # type: ignore[attr-defined]
    store.close()
    # every table any migration creates, children before the tables they reference
    created = re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", "\n".join(s for step in migrations(dialect) for s in step))
    run_sql(location, [f"DROP TABLE IF EXISTS {t}" for t in reversed(dict.fromkeys(created))] + ["DROP TABLE schema_version"])
    run_sql(location, [*migrations(dialect)[0], "CREATE TABLE schema_version (version INTEGER NOT NULL)", "INSERT INTO schema_version VALUES (1)"])
    return location


def test_a_new_store_has_the_current_schema_once(store_locations: StoreLocations) -> None:
    location = store_locations.new()
    with open_store(location) as store:
        assert (store.upgraded_from, store.schema_version) == (0, SCHEMA_VERSION)
    with open_store(location) as store:  # reopening migrates nothing twice
        assert (store.upgraded_from, store.schema_version) == (SCHEMA_VERSION, SCHEMA_VERSION)
    assert run_sql(location, ["SELECT count(*) FROM schema_version"]) == [(SCHEMA_VERSION,)]


def test_a_schema_newer_than_the_code_is_refused(store_locations: StoreLocations, capsys: pytest.CaptureFixture[str]) -> None:
    location = store_locations.new()
    open_store(location).close()
    run_sql(location, [f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION + 1})"])
    with pytest.raises(SchemaError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this modelsieve"):
        open_store(location)
    assert main(["list", "stats", "--db", location]) == 2
    error = capsys.readouterr().err
    assert error.startswith("modelsieve: error: ") and error.count("\n") == 1 and "upgrade modelsieve" in error


def test_an_older_schema_is_upgraded_keeping_its_entries(store_locations: StoreLocations) -> None:
    location = make_version_1(store_locations)
    run_sql(location, ["INSERT INTO lists VALUES ('l', 'local', '', '2026-01-01T00:00:00Z', NULL)"])
    with open_store(location, upgrade=True) as store:
        assert (store.upgraded_from, store.schema_version) == (1, SCHEMA_VERSION)
        assert [info.name for info in store.lists()] == ["l"]
        assert store.add_entries("l", [NewEntry(category="2c", digests={"md5": "a" * 32})]) == 1


def test_entries_and_their_events_survive_the_upgrade_to_seq_keyed_entries(store_locations: StoreLocations) -> None:
    """Version 4 rebuilds the entries table keyed by seq: rows, lookups and event resolution carry over."""
    location = make_version_1(store_locations)
    row = "INSERT INTO entries (id, list_name, category, kind, {digest}, source, evidence, added, status, identity, seq) VALUES "
    run_sql(location, [
        "INSERT INTO lists VALUES ('l', 'local', '', '2026-01-01T00:00:00Z', NULL)",
        "INSERT INTO events (seq, at, action, list_name) VALUES (1, '2026-01-01T00:00:00Z', 'create-list', 'l')",
        row.format(digest="md5") + f"('e1', 'l', '2c', 'other', '{'a' * 32}', 'x', 'exact-file', '2026-01-01T00:00:00Z', 'disputed', 'i1', 4)",
        row.format(digest="sha1") + f"('e2', 'l', '2b', 'other', '{'b' * 40}', 'x', 'exact-file', '2026-01-01T00:00:00Z', 'active', 'i2', 3)",
        *(f"INSERT INTO events (seq, at, action, list_name, entry_id) VALUES ({seq}, '2026-01-01T00:00:00Z', '{action}', 'l', '{entry}')"
          for seq, action, entry in ((2, "add", "e1"), (3, "add", "e2"), (4, "dispute", "e1"))),
    ])
    with open_store(location, upgrade=True) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [(e.id, e.seq, e.status) for e in store.entries()] == [("e2", 3, "active"), ("e1", 4, "disputed")]
        assert {e.id for e in store.find_digests({"md5": "a" * 32, "sha1": "b" * 40})} == {"e1", "e2"}
        assert [(e.id, e.status) for e in store.entries_by_seq([2])] == [("e1", "disputed")]
        added = store.add_entry("l", NewEntry(category="2c", digests={"md5": "c" * 32}))
        assert added is not None and added.seq == 5 and store.get_entry(added.id) == added
        assert store.add_entry("l", NewEntry(category="2c", digests={"md5": "c" * 32})) is None  # still one identity per list


def test_postgresql_replicas_never_upgrade_on_their_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locations = StoreLocations("postgresql", tmp_path)
    try:
        location = make_version_1(locations)
        with pytest.raises(SchemaError, match="schema version 1, this modelsieve needs .*modelsieve db upgrade --db"):
            open_store(location)
        assert main(["db", "upgrade", "--db", location]) == 0
        assert f"schema upgraded from version 1 to {SCHEMA_VERSION}" in capsys.readouterr().out
        assert main(["db", "upgrade", "--db", location, "--json"]) == 0
        assert f'"from_version":{SCHEMA_VERSION},"to_version":{SCHEMA_VERSION}' in capsys.readouterr().out
        with open_store(location) as store:
            assert store.schema_version == SCHEMA_VERSION
            assert store.location.startswith("postgresql://modelsieve@") and "modelsieve:" not in store.location
    finally:
        locations.drop()


def test_an_unreachable_database_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    address = "postgresql://nobody:secret@127.0.0.1:9/nothing"
    with pytest.raises(StoreUnavailableError, match=r"cannot reach the PostgreSQL store at postgresql://nobody@127\.0\.0\.1:9/nothing"):
        open_store(address)
    assert main(["db", "upgrade", "--db", address]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "127.0.0.1:9" in error and "secret" not in error


def test_the_embedded_store_upgrades_itself_when_opened(tmp_path: Path) -> None:
    location = make_version_1(StoreLocations("sqlite", tmp_path))
    with SQLiteStore(location) as store:
        assert (store.upgraded_from, store.schema_version) == (1, SCHEMA_VERSION)
