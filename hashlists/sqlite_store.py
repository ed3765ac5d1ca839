"""The embedded store backend: one SQLite file in WAL mode (readers never block the import writer).

Schema changes are numbered migrations recorded in `schema_version`; a store written by newer
code (a higher version) is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from modelsieve.fingerprint.calibration import Cohort
from modelsieve.fingerprint.fuzzy import BaseModel, FingerprintKey
from modelsieve.hashlists.background import load_cohorts
from modelsieve.hashlists.bases import load_bases
from modelsieve.hashlists.db import open_database
from modelsieve.hashlists.errors import InvalidEntryError, NotFoundError, SchemaError
from modelsieve.hashlists.fuzzy_index import decode_codes, stored_codes
from modelsieve.hashlists.model import (
    AUTOV3_PREFIX,
    DIGEST_LENGTHS,
    STATUSES,
    Entry,
    Event,
    IndexRow,
    ListInfo,
    NewEntry,
    Opinion,
    TrustedKey,
    check_choice,
    check_list_name,
    entry_identity,
    new_entry_id,
    utc_now,
)
from modelsieve.hashlists.store import Store
from modelsieve.hashlists.urls import url_key

DIGEST_COLUMNS = tuple(DIGEST_LENGTHS)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # version 1: lists, entries (one column per digest), events, opinions, trust, sync positions
    (
        """CREATE TABLE lists (
            name TEXT PRIMARY KEY,
            publisher TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL,
            origin_list TEXT,
            UNIQUE (publisher, origin_list)
        )""",
        f"""CREATE TABLE entries (
            id TEXT PRIMARY KEY,
            list_name TEXT NOT NULL REFERENCES lists(name),
            category TEXT NOT NULL,
            kind TEXT NOT NULL,
            {", ".join(f"{name} TEXT" for name in DIGEST_COLUMNS)},
            fingerprint BLOB,
            fp_codes TEXT,
            url TEXT,
            url_key TEXT,
            domain TEXT,
            source TEXT NOT NULL,
            evidence TEXT NOT NULL,
            first_seen TEXT,
            added TEXT NOT NULL,
            status TEXT NOT NULL,
            expires TEXT,
            origin TEXT,
            note TEXT,
            identity TEXT NOT NULL,
            seq INTEGER NOT NULL,
            UNIQUE (list_name, identity)
        )""",
        *(f"CREATE INDEX entries_{name} ON entries({name}) WHERE {name} IS NOT NULL" for name in DIGEST_COLUMNS),
        f"CREATE INDEX entries_autov3_prefix ON entries(substr(autov3, 1, {AUTOV3_PREFIX})) WHERE autov3 IS NOT NULL",
        "CREATE INDEX entries_url_key ON entries(url_key) WHERE url_key IS NOT NULL",
        "CREATE INDEX entries_domain ON entries(domain) WHERE domain IS NOT NULL",
        "CREATE INDEX entries_seq ON entries(seq)",
        "CREATE INDEX entries_list ON entries(list_name, seq)",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            list_name TEXT NOT NULL,
            entry_id TEXT,
            actor TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX events_list ON events(list_name, seq)",
        """CREATE TABLE opinions (
            seq INTEGER PRIMARY KEY,
            entry_id TEXT NOT NULL,
            opinion TEXT NOT NULL,
            by_name TEXT NOT NULL,
            at TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            origin TEXT,
            UNIQUE (entry_id, by_name, at, opinion)
        )""",
        "CREATE INDEX opinions_entry ON opinions(entry_id)",
        """CREATE TABLE trusted_keys (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            key_id TEXT NOT NULL,
            level TEXT NOT NULL,
            added TEXT NOT NULL
        )""",
        """CREATE TABLE sync_positions (
            publisher TEXT NOT NULL,
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            PRIMARY KEY (publisher, stream)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_ENTRY_COLUMNS = (
    "id",
    "list_name",
    "category",
    "kind",
    *DIGEST_COLUMNS,
    "fingerprint",
    "fp_codes",
    "url",
    "url_key",
    "domain",
    "source",
    "evidence",
    "first_seen",
    "added",
    "status",
    "expires",
    "origin",
    "note",
    "identity",
    "seq",
)
_UPSERT_ENTRY = (
    f"INSERT INTO entries ({', '.join(_ENTRY_COLUMNS)}) VALUES ({', '.join('?' * len(_ENTRY_COLUMNS))}) "
    f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _ENTRY_COLUMNS[1:])}"
)
_INSERT_NEW_ENTRY = (
    f"INSERT INTO entries ({', '.join(_ENTRY_COLUMNS)}) VALUES ({', '.join('?' * len(_ENTRY_COLUMNS))}) "
    "ON CONFLICT(list_name, identity) DO NOTHING"
)
_INSERT_EVENT = "INSERT INTO events (seq, at, action, list_name, entry_id, actor, detail) VALUES (?, ?, ?, ?, ?, ?, ?)"
_BATCH = 10_000


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        id=row["id"],
        list=row["list_name"],
        category=row["category"],
        kind=row["kind"],
        digests={name: row[name] for name in DIGEST_COLUMNS if row[name]},
        fingerprint=row["fingerprint"],
        url=row["url"],
        domain=row["domain"],
        source=row["source"],
        evidence=row["evidence"],
        first_seen=row["first_seen"],
        added=row["added"],
        status=row["status"],
        expires=row["expires"],
        origin=row["origin"],
        note=row["note"],
        seq=row["seq"],
    )


def _list_info(row: sqlite3.Row) -> ListInfo:
    return ListInfo(
        name=row["name"],
        publisher=row["publisher"],
        description=row["description"],
        created=row["created"],
        origin_list=row["origin_list"],
    )


class SQLiteStore(Store):
    """The Store on one SQLite file; thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._db = open_database(path)
        self._conn = self._db.conn
        self._conn.isolation_level = None  # transactions are explicit: see transaction()
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA cache_size = -131072")  # 128 MiB: bulk imports touch random index pages
        self._path = str(path) if path is not None else "default store"
        self._lock = threading.RLock()
        self._depth = 0
        self._migrate()

    # -- lifecycle -------------------------------------------------------------------------
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

    def _migrate(self) -> None:
        with self.transaction():
            self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise SchemaError(
                    f"the store at {self._path} has schema version {current}, newer than this "
                    f"modelsieve understands ({SCHEMA_VERSION}); upgrade modelsieve"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _append_events(self, rows: list[tuple[str, str, str | None, str, str]]) -> list[int]:
        """Append events (action, list, entry id, actor, detail) inside the caller's transaction."""
        first = self.last_seq() + 1
        at = utc_now()
        self._conn.executemany(_INSERT_EVENT, ((first + i, at, *row) for i, row in enumerate(rows)))
        return list(range(first, first + len(rows)))

    # -- lists -----------------------------------------------------------------------------
    def create_list(
        self, name: str, *, publisher: str = "local", description: str = "", origin_list: str | None = None
    ) -> ListInfo:
        check_list_name(name)
        with self.transaction():
            if self._query("SELECT 1 FROM lists WHERE name = ?", (name,)):
                raise InvalidEntryError(f"a list called {name!r} already exists")
            self._conn.execute(
                "INSERT INTO lists (name, publisher, description, created, origin_list) VALUES (?, ?, ?, ?, ?)",
                (name, publisher, description, utc_now(), origin_list),
            )
            self._append_events([("create-list", name, None, publisher, origin_list or "")])
        return self.get_list(name)

    def get_list(self, name: str) -> ListInfo:
        rows = self._query("SELECT * FROM lists WHERE name = ?", (name,))
        if not rows:
            known = ", ".join(info.name for info in self.lists()) or "none yet; see `modelsieve list create`"
            raise NotFoundError(f"no list called {name!r} (lists: {known})")
        return _list_info(rows[0])

    def find_list(self, publisher: str, origin_list: str) -> ListInfo | None:
        rows = self._query("SELECT * FROM lists WHERE publisher = ? AND origin_list = ?", (publisher, origin_list))
        return _list_info(rows[0]) if rows else None

    def lists(self) -> list[ListInfo]:
        return [_list_info(row) for row in self._query("SELECT * FROM lists ORDER BY name")]

    # -- entries ---------------------------------------------------------------------------
    def add_entries(
        self,
        list_name: str,
        entries: Iterable[NewEntry],
        *,
        actor: str = "",
        origin: str | None = None,
        replace: bool = False,
    ) -> int:
        count = 0
        with self.transaction():
            publisher = self.get_list(list_name).publisher
            batch: list[NewEntry] = []
            for entry in entries:
                batch.append(entry.validated())
                if len(batch) >= _BATCH:
                    count += self._insert_batch(list_name, batch, actor or publisher, origin, publisher, replace)
                    batch = []
            count += self._insert_batch(list_name, batch, actor or publisher, origin, publisher, replace)
        return count

    def _insert_batch(
        self, list_name: str, batch: list[NewEntry], actor: str, origin: str | None, publisher: str, replace: bool
    ) -> int:
        """Insert a batch (skipping what the list holds, or replacing by id) and its `add` events.

        Rows take consecutive seqs; skipped ones leave gaps, which is fine: seqs only ever grow.
        """
        if not batch:
            return 0
        first = self.last_seq() + 1
        now = utc_now()
        rows = (
            (
                entry.id or new_entry_id(),
                list_name,
                entry.category,
                entry.kind,
                *(entry.digests.get(name) for name in DIGEST_COLUMNS),
                entry.fingerprint,
                stored_codes(entry.fingerprint) if entry.fingerprint else None,
                entry.url,
                url_key(entry.url) if entry.url else None,
                entry.domain,
                entry.source or publisher,
                entry.evidence,
                entry.first_seen,
                entry.added or now,
                entry.status,
                entry.expires,
                origin,
                entry.note,
                entry_identity(entry),
                first + offset,
            )
            for offset, entry in enumerate(batch)
        )
        try:
            self._conn.executemany(_UPSERT_ENTRY if replace else _INSERT_NEW_ENTRY, rows)
        except sqlite3.IntegrityError as exc:
            raise InvalidEntryError(f"entries conflict with the list's ({exc})") from None
        cursor = self._conn.execute(
            "INSERT INTO events (seq, at, action, list_name, entry_id, actor, detail) "
            "SELECT seq, ?, 'add', list_name, id, ?, '' FROM entries WHERE seq BETWEEN ? AND ?",
            (now, actor, first, first + len(batch) - 1),
        )
        return cursor.rowcount

    def get_entry(self, entry_id: str) -> Entry:
        rows = self._query("SELECT * FROM entries WHERE id = ?", (entry_id,))
        if not rows:
            raise NotFoundError(f"no entry {entry_id!r}")
        return _entry(rows[0])

    def entries(
        self, list_name: str | None = None, *, changed_since: int = 0, until: int | None = None
    ) -> Iterator[Entry]:
        # Read in pages keyed on seq so a long iteration never holds the lock or a cursor open.
        last = changed_since
        while True:
            clauses = ["seq > ?"]
            params: list[Any] = [last]
            if list_name is not None:
                clauses.append("list_name = ?")
                params.append(list_name)
            if until is not None:
                clauses.append("seq <= ?")
                params.append(until)
            rows = self._query(f"SELECT * FROM entries WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT {_BATCH}", params)
            yield from (_entry(row) for row in rows)
            if len(rows) < _BATCH:
                return
            last = rows[-1]["seq"]

    def index_rows(self, *, changed_since: int = 0, until: int | None = None) -> Iterator[IndexRow]:
        columns = ", ".join(("seq", "status", "url", "domain", "fp_codes", *DIGEST_COLUMNS))
        last = changed_since
        while True:
            bound = "" if until is None else f" AND seq <= {int(until)}"
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {columns} FROM entries WHERE seq > ?{bound} ORDER BY seq LIMIT {_BATCH}", (last,)
                ).fetchall()
            for row in rows:
                digests = {name: row[name] for name in DIGEST_COLUMNS if row[name]}
                yield IndexRow(row["seq"], row["status"], digests, row["url"], row["domain"], decode_codes(row["fp_codes"]))
            if len(rows) < _BATCH:
                return
            last = rows[-1]["seq"]

    def entries_by_id(self, entry_ids: Iterable[str]) -> dict[str, Entry]:
        wanted = list(dict.fromkeys(entry_ids))
        found: dict[str, Entry] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._query(f"SELECT * FROM entries WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
            found.update((row["id"], _entry(row)) for row in rows)
        return found

    def entries_by_seq(self, seqs: Iterable[int]) -> list[Entry]:
        wanted = sorted({int(seq) for seq in seqs})
        found: list[Entry] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._query(f"SELECT * FROM entries WHERE seq IN ({', '.join('?' * len(chunk))})", chunk)
            found.extend(_entry(row) for row in rows)
        return found

    def find_digests(self, digests: Mapping[str, str]) -> list[Entry]:
        clauses: list[str] = []
        params: list[str] = []
        for name, value in digests.items():
            if name not in DIGEST_COLUMNS:
                continue
            if name == "autov3":
                clauses.append(f"substr(autov3, 1, {AUTOV3_PREFIX}) = ?")
                params.append(value[:AUTOV3_PREFIX])
            else:
                clauses.append(f"{name} = ?")
                params.append(value)
        if not clauses:
            return []
        return [_entry(row) for row in self._query(f"SELECT * FROM entries WHERE {' OR '.join(clauses)}", params)]

    def set_status(self, entry_id: str, status: str, *, actor: str = "", reason: str = "") -> Entry:
        check_choice("status", status, STATUSES)
        with self.transaction():
            entry = self.get_entry(entry_id)
            action = {"active": "reactivate", "retracted": "retract", "disputed": "dispute"}[status]
            (seq,) = self._append_events([(action, entry.list, entry_id, actor, reason)])
            self._conn.execute("UPDATE entries SET status = ?, seq = ? WHERE id = ?", (status, seq, entry_id))
        return dataclasses.replace(entry, status=status, seq=seq)

    def counts(self, list_name: str | None = None) -> dict[str, int]:
        where, params = ("WHERE list_name = ?", (list_name,)) if list_name is not None else ("", ())
        digest_sums = ", ".join(f"count({name})" for name in DIGEST_COLUMNS)
        counts: dict[str, int] = {}
        for column in ("status", "kind", "category"):
            for row in self._query(f"SELECT {column}, count(*) FROM entries {where} GROUP BY {column}", params):
                counts[f"{column}:{row[0]}"] = row[1]
        row = self._query(f"SELECT count(*), count(fingerprint), count(url), count(domain), {digest_sums} FROM entries {where}", params)[0]
        counts["entries"], counts["fingerprints"], counts["urls"], counts["domains"] = row[0], row[1], row[2], row[3]
        counts.update((f"digest:{name}", row[4 + i]) for i, name in enumerate(DIGEST_COLUMNS))
        return counts

    # -- events ----------------------------------------------------------------------------
    def events(self, *, since: int = 0, list_name: str | None = None, limit: int | None = None) -> Iterator[Event]:
        last = since
        remaining = limit
        while remaining is None or remaining > 0:
            page = _BATCH if remaining is None else min(_BATCH, remaining)
            clauses, params = ["seq > ?"], [last]
            if list_name is not None:
                clauses.append("list_name = ?")
                params.append(list_name)
            rows = self._query(f"SELECT * FROM events WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT {page}", params)
            yield from (
                Event(row["seq"], row["at"], row["action"], row["list_name"], row["entry_id"], row["actor"], row["detail"])
                for row in rows
            )
            if len(rows) < page:
                return
            last = rows[-1]["seq"]
            if remaining is not None:
                remaining -= len(rows)

    def last_seq(self) -> int:
        return self._query("SELECT coalesce(max(seq), 0) FROM events")[0][0]

    # -- opinions --------------------------------------------------------------------------
    def add_opinion(self, opinion: Opinion) -> int:
        with self.transaction():
            entry = self.get_entry(opinion.entry_id)
            exists = self._query(
                "SELECT seq FROM opinions WHERE entry_id = ? AND by_name = ? AND at = ? AND opinion = ?",
                (opinion.entry_id, opinion.by, opinion.at, opinion.opinion),
            )
            if exists:
                return int(exists[0][0])
            (seq,) = self._append_events([(opinion.opinion, entry.list, entry.id, opinion.by, opinion.reason)])
            self._conn.execute(
                "INSERT INTO opinions (seq, entry_id, opinion, by_name, at, reason, origin) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, opinion.entry_id, opinion.opinion, opinion.by, opinion.at, opinion.reason, opinion.origin),
            )
        return seq

    def opinions(self, *, entry_id: str | None = None, origin: str | None = None, since: int = 0) -> list[Opinion]:
        clauses, params = ["seq > ?"], [since]
        if entry_id is not None:
            clauses.append("entry_id = ?")
            params.append(entry_id)
        if origin is not None:
            clauses.append("origin = ?")
            params.append(origin)
        rows = self._query(f"SELECT * FROM opinions WHERE {' AND '.join(clauses)} ORDER BY seq", params)
        return [Opinion(r["entry_id"], r["opinion"], r["by_name"], r["at"], r["reason"], r["origin"], r["seq"]) for r in rows]

    # -- trust -----------------------------------------------------------------------------
    def put_trusted_key(self, key: TrustedKey) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO trusted_keys (name, public_key, key_id, level, added) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET public_key = excluded.public_key, key_id = excluded.key_id, "
                "level = excluded.level",
                (key.name, key.public_key, key.key_id, key.level, key.added),
            )

    def trusted_key(self, name: str) -> TrustedKey | None:
        rows = self._query("SELECT * FROM trusted_keys WHERE name = ?", (name,))
        return TrustedKey(**dict(rows[0])) if rows else None

    def trusted_keys(self) -> list[TrustedKey]:
        return [TrustedKey(**dict(row)) for row in self._query("SELECT * FROM trusted_keys ORDER BY name")]

    # -- reference models -------------------------------------------------------------------------
    def bases(self, key: FingerprintKey) -> list[BaseModel]:
        return load_bases(self._db, key)

    def cohorts(self, key: FingerprintKey) -> dict[str, Cohort]:
        return load_cohorts(self._db, key)

    # -- bundle sync positions ----------------------------------------------------------------
    def sync_position(self, publisher: str, stream: str) -> int:
        rows = self._query("SELECT seq FROM sync_positions WHERE publisher = ? AND stream = ?", (publisher, stream))
        return int(rows[0][0]) if rows else 0

    def set_sync_position(self, publisher: str, stream: str, seq: int) -> None:
        with self.transaction():
            self._conn.execute(
                "INSERT INTO sync_positions (publisher, stream, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(publisher, stream) DO UPDATE SET seq = excluded.seq",
                (publisher, stream, seq),
            )

