"""The Store on a SQL database, written once for every backend (SQLite, PostgreSQL).

Backends supply the connection handling (`_execute`, `_execute_many`, `transaction`) and a
`Dialect` (column types); the schema, its migrations and every query live here. Statements use
`?` placeholders and read result columns by name, so they run unchanged on both databases.

Schema changes are numbered migrations recorded in `schema_version`. A store written by newer
code (a higher version) is refused rather than misread; an older one is upgraded where the
backend allows it (see `SQLStore.__init__`).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelsieve.fingerprint.calibration import Cohort, check_background_member
from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fuzzy import SAME_BASE_DISTANCE, BaseModel, Fingerprint, FingerprintKey, nearest_base
from modelsieve.hashlists.errors import InvalidEntryError, NotFoundError, SchemaError
from modelsieve.hashlists.fuzzy_index import decode_codes, stored_codes
from modelsieve.hashlists.model import (
    AUTOV3_PREFIX,
    DIGEST_LENGTHS,
    STATUSES,
    BackgroundInfo,
    BaseInfo,
    CrawlJobState,
    CrawlTargetRow,
    Entry,
    Event,
    IndexRow,
    LeasedCrawlJob,
    ListInfo,
    NewEntry,
    Opinion,
    StoredApiKey,
    TrustedKey,
    check_choice,
    check_list_name,
    check_publisher_name,
    check_text,
    entry_identity,
    identifying_digests,
    new_entry_ids,
    utc_now,
)
from modelsieve.hashlists.store import Store
from modelsieve.hashlists.urls import url_key

DIGEST_COLUMNS = tuple(DIGEST_LENGTHS)
Row = Mapping[str, Any]


@dataclass(frozen=True)
class Dialect:
    """The column types that differ between databases; everything else is shared SQL."""

    blob: str  # binary strings
    integer: str  # 64-bit integers (sequence numbers)
    seq_key: str  # the event log's integer primary key


def migrations(dialect: Dialect) -> tuple[tuple[str, ...], ...]:
    """The schema as numbered migrations (version N applies migrations[N - 1]) in `dialect`."""
    return (
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
            _entries_table("entries", id_column="id TEXT PRIMARY KEY", seq_column=f"seq {dialect.integer} NOT NULL", dialect=dialect),
            *_entries_lookup_indexes(),
            "CREATE INDEX entries_seq ON entries(seq)",
            "CREATE INDEX entries_list ON entries(list_name, seq)",
            f"""CREATE TABLE events (
                seq {dialect.seq_key},
                at TEXT NOT NULL,
                action TEXT NOT NULL,
                list_name TEXT NOT NULL,
                entry_id TEXT,
                actor TEXT NOT NULL DEFAULT '',
                detail TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX events_list ON events(list_name, seq)",
            f"""CREATE TABLE opinions (
                seq {dialect.seq_key},
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
            f"""CREATE TABLE sync_positions (
                publisher TEXT NOT NULL,
                stream TEXT NOT NULL,
                seq {dialect.integer} NOT NULL,
                PRIMARY KEY (publisher, stream)
            )""",
        ),
        # version 2: every bundle import reads the opinions about one publisher's entries
        ("CREATE INDEX opinions_origin ON opinions(origin, seq) WHERE origin IS NOT NULL",),
        # version 3: what SQLite stores kept in tables of their own until now (hence IF NOT
        # EXISTS, with the same columns): registered bases and their background cohorts, API
        # keys, resumable crawl jobs and the crawl jobs submitted over the API
        (
            f"""CREATE TABLE IF NOT EXISTS fuzzy_bases (
                name TEXT PRIMARY KEY,
                key_id TEXT,
                key_check TEXT,
                scheme INTEGER,
                tensors INTEGER,
                source TEXT,
                added TEXT,
                fingerprint {dialect.blob} NOT NULL
            )""",
            f"""CREATE TABLE IF NOT EXISTS fuzzy_background (
                id TEXT PRIMARY KEY,
                base TEXT NOT NULL,
                kind TEXT,
                key_id TEXT,
                key_check TEXT,
                scheme INTEGER,
                tensors INTEGER,
                source TEXT,
                added TEXT,
                fingerprint {dialect.blob} NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS idx_fuzzy_background_base ON fuzzy_background(base)",
            """CREATE TABLE IF NOT EXISTS api_keys (
                key_id TEXT PRIMARY KEY,
                secret_sha256 TEXT NOT NULL,
                name TEXT,
                scopes TEXT NOT NULL,
                rate_per_second DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                revoked_at DOUBLE PRECISION
            )""",
            f"""CREATE TABLE IF NOT EXISTS crawl_jobs (
                id {dialect.integer} PRIMARY KEY,
                out_path TEXT NOT NULL UNIQUE,
                input_sha256 TEXT NOT NULL,
                created_at TEXT NOT NULL,
                finished_at TEXT,
                out_offset {dialect.integer} NOT NULL DEFAULT 0
            )""",
            f"""CREATE TABLE IF NOT EXISTS crawl_targets (
                job_id {dialect.integer} NOT NULL REFERENCES crawl_jobs(id) ON DELETE CASCADE,
                line {dialect.integer} NOT NULL,
                url TEXT NOT NULL,
                context TEXT NOT NULL,
                done INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (job_id, line),
                UNIQUE (job_id, url)
            )""",
            f"""CREATE TABLE IF NOT EXISTS api_crawl_jobs (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                mode TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                crawl_job_id {dialect.integer} NOT NULL,
                finished_at DOUBLE PRECISION,
                error TEXT,
                lease_owner TEXT,
                lease_until DOUBLE PRECISION
            )""",
        ),
        # version 4: cheaper bulk ingest — every entry row is written once per B-tree, so fewer
        # B-trees per entry. The entry's seq becomes the table's key (SQLite: the rowid itself, so
        # rows are appended in seq order and no separate seq index is written; the id stays unique),
        # and the events' list index, which no query needed, goes (6 B-tree inserts per hash-only
        # entry instead of 8; see the README, "Hashlists").
        (
            _entries_table("entries_v4", id_column="id TEXT NOT NULL UNIQUE", seq_column=f"seq {dialect.seq_key}", dialect=dialect),
            f"INSERT INTO entries_v4 ({', '.join(_ENTRY_COLUMNS)}) SELECT {', '.join(_ENTRY_COLUMNS)} FROM entries",
            "DROP TABLE entries",
            "ALTER TABLE entries_v4 RENAME TO entries",
            *_entries_lookup_indexes(),
            "CREATE INDEX entries_list ON entries(list_name, seq)",
            "DROP INDEX events_list",
        ),
        # version 5: API crawl jobs can be cancelled and listed per key, newest first; a crawl
        # job records its mode, so a resume cannot finish it in another one
        (
            "ALTER TABLE api_crawl_jobs ADD COLUMN cancelled_at DOUBLE PRECISION",
            "ALTER TABLE crawl_jobs ADD COLUMN mode TEXT",
            "CREATE INDEX api_crawl_jobs_key ON api_crawl_jobs(key_id, created_at)",
        ),
    )


def _entries_table(table: str, *, id_column: str, seq_column: str, dialect: Dialect) -> str:
    """The entries table (one column per digest); its id and seq columns differ between versions."""
    return f"""CREATE TABLE {table} (
                {id_column},
                list_name TEXT NOT NULL REFERENCES lists(name),
                category TEXT NOT NULL,
                kind TEXT NOT NULL,
                {", ".join(f"{name} TEXT" for name in DIGEST_COLUMNS)},
                fingerprint {dialect.blob},
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
                {seq_column},
                UNIQUE (list_name, identity)
            )"""


def _entries_lookup_indexes() -> tuple[str, ...]:
    """The entries' lookup indexes: digests (partial: only the entries that have one), URL, domain."""
    return (
        *(f"CREATE INDEX entries_{name} ON entries({name}) WHERE {name} IS NOT NULL" for name in DIGEST_COLUMNS),
        f"CREATE INDEX entries_autov3_prefix ON entries((substr(autov3, 1, {AUTOV3_PREFIX}))) WHERE autov3 IS NOT NULL",
        "CREATE INDEX entries_url_key ON entries(url_key) WHERE url_key IS NOT NULL",
        "CREATE INDEX entries_domain ON entries(domain) WHERE domain IS NOT NULL",
    )


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
SCHEMA_VERSION = len(migrations(Dialect("", "", "")))

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
_LISTED_CHUNK = 2_000  # digests looked up at once (SQLite allows 32,766 parameters)
_IDENTITY = "identity"  # the key `_against_listed` finds entries without an identifying digest by
MAX_BACKGROUND_SOURCE = 1000
_BASE_COLUMNS = "name, key_id, key_check, scheme, tensors, source, added"
_BACKGROUND_COLUMNS = "id, base, kind, key_id, tensors, source, added"
_API_KEY_COLUMNS = "key_id, secret_sha256, name, scopes, rate_per_second, created_at, revoked_at"
_CRAWL_JOB_COLUMNS = "id, out_path, input_sha256, out_offset, finished_at, mode"
_LEASED_JOB_COLUMNS = "id, key_id, mode, created_at, crawl_job_id, finished_at, error, lease_until, cancelled_at"


def _entry(row: Row) -> Entry:
    return Entry(
        id=row["id"],
        list=row["list_name"],
        category=row["category"],
        kind=row["kind"],
        digests={name: row[name] for name in DIGEST_COLUMNS if row[name]},
        fingerprint=bytes(row["fingerprint"]) if row["fingerprint"] is not None else None,
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


def _as_new_entry(entry: Entry) -> NewEntry:
    return NewEntry(
        id=entry.id, category=entry.category, kind=entry.kind, digests=dict(entry.digests), fingerprint=entry.fingerprint,
        url=entry.url, domain=entry.domain, source=entry.source, evidence=entry.evidence, first_seen=entry.first_seen,
        added=entry.added, expires=entry.expires, note=entry.note, status=entry.status,
    )


def _enriched(listed: NewEntry, new: NewEntry) -> NewEntry | None:
    """`listed` with the digests and fingerprint only `new` has, its kind where listed said "other"
    (a hash-only entry whose file turned up), and the later expiry (none is latest: a file listed
    again is listed for as long as the newer listing says); None when `new` adds nothing. Listed
    values win otherwise."""
    merged = dataclasses.replace(
        listed,
        digests={**new.digests, **listed.digests},
        fingerprint=listed.fingerprint or new.fingerprint,
        kind=new.kind if listed.kind == "other" else listed.kind,
        expires=None if listed.expires is None or new.expires is None else max(listed.expires, new.expires),
    )
    return None if merged == listed else merged


def _base_info(row: Row) -> BaseInfo:
    return BaseInfo(*(row[c] for c in _BASE_COLUMNS.split(", ")))


def _background_info(row: Row) -> BackgroundInfo:
    return BackgroundInfo(*(row[c] for c in _BACKGROUND_COLUMNS.split(", ")))


def _background_fingerprint(row: Row) -> Fingerprint:
    try:
        return Fingerprint.from_bytes(bytes(row["fingerprint"]))
    except FingerprintError as exc:
        raise SchemaError(f"background model {row['id'][:12]} of base {row['base']!r} is unreadable: {exc}") from None


def _api_key(row: Row) -> StoredApiKey:
    return StoredApiKey(
        row["key_id"], row["secret_sha256"], row["name"] or "", tuple(row["scopes"].split()),
        row["rate_per_second"], row["created_at"], row["revoked_at"],
    )


def _check_base_name(name: str) -> None:
    if not name.strip() or len(name) > 256:
        raise InvalidEntryError("a base name must be 1-256 characters")
    check_text("base name", name)


def _list_info(row: Row) -> ListInfo:
    return ListInfo(
        name=row["name"],
        publisher=row["publisher"],
        description=row["description"],
        created=row["created"],
        origin_list=row["origin_list"],
    )


class SQLStore(Store):
    """The Store's queries on a SQL database; subclasses connect (see the module docstring)."""

    dialect: Dialect
    integrity_errors: tuple[type[Exception], ...]

    # -- what a backend supplies ---------------------------------------------------------------
    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[Row], int]:
        """Run one statement (in the current transaction, if any): its rows (if any) and row count."""

    @abc.abstractmethod
    def _execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row, in the current transaction."""

    # -- schema --------------------------------------------------------------------------------
    def _migrate(self, *, upgrade: bool) -> None:
        """Create the schema in an empty store; apply missing migrations when `upgrade`.

        Refuses (SchemaError) a schema newer than this code, and an older one without `upgrade`.
        """
        steps = migrations(self.dialect)
        with self.transaction():
            self._execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = self._query("SELECT coalesce(max(version), 0) AS version FROM schema_version")[0]["version"]
            if current > len(steps):
                raise SchemaError(
                    f"the store at {self.location} has schema version {current}, newer than this "
                    f"modelsieve understands ({len(steps)}); upgrade modelsieve"
                )
            if 0 < current < len(steps) and not upgrade:
                raise SchemaError(
                    f"the store at {self.location} has schema version {current}, this modelsieve needs "
                    f"{len(steps)}: run `modelsieve db upgrade --db {self.location}`"
                )
            for version in range(current + 1, len(steps) + 1):
                for statement in steps[version - 1]:
                    self._execute(statement)
                self._execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        self.upgraded_from, self.schema_version = current, len(steps)

    # -- helpers ---------------------------------------------------------------------------------
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._execute(sql, tuple(params))[0]

    def _append_events(self, rows: list[tuple[str, str, str | None, str, str]]) -> list[int]:
        """Append events (action, list, entry id, actor, detail) inside the caller's transaction."""
        first = self.last_seq() + 1
        at = utc_now()
        self._execute_many(_INSERT_EVENT, [(first + i, at, *row) for i, row in enumerate(rows)])
        return list(range(first, first + len(rows)))

    # -- lists -----------------------------------------------------------------------------
    def create_list(
        self, name: str, *, publisher: str = "local", description: str = "", origin_list: str | None = None
    ) -> ListInfo:
        check_list_name(name)
        check_publisher_name(publisher)
        if origin_list is None and "/" in name:  # PUBLISHER/LIST is where an import files a partner's list
            raise InvalidEntryError(f"'/' is kept for imported lists (PUBLISHER/LIST): name a list of your own without it (got {name!r})")
        with self.transaction():
            if self._query("SELECT 1 AS found FROM lists WHERE name = ?", (name,)):
                raise InvalidEntryError(f"a list called {name!r} already exists")
            self._execute(
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
            info = self.get_list(list_name)
            if info.imported and origin != info.publisher:  # else its entries would claim the publisher as source
                raise InvalidEntryError(
                    f"list {list_name} is {info.publisher}'s, imported: only their bundles add to it; add entries to a list of your own"
                )
            publisher = info.publisher

            def insert(batch: list[NewEntry]) -> int:
                if replace:
                    return self._insert_batch(list_name, batch, actor or publisher, origin, publisher, True)
                fresh, enriched = self._against_listed(list_name, batch)
                self._insert_batch(list_name, enriched, actor or publisher, origin, publisher, True)
                return self._insert_batch(list_name, fresh, actor or publisher, origin, publisher, False)

            batch: list[NewEntry] = []
            for entry in entries:
                batch.append(entry.validated())
                if len(batch) >= _BATCH:
                    count += insert(batch)
                    batch = []
            count += insert(batch)
        return count

    def _against_listed(self, list_name: str, batch: list[NewEntry]) -> tuple[list[NewEntry], list[NewEntry]]:
        """The batch sorted against the entries the list holds for the same files (an identifying
        digest in common; for entries without one, URLs and domains, the same identity): (entries
        to insert, listed entries enriched with the batch's other digests, fingerprint and later
        expiry). One entry per file: an entry for a file the list holds retracted or disputed is
        dropped (a false positive stays retracted, a dispute in force, when a list arrives again
        with other digests), and so is one adding nothing."""
        identifying = [
            list(identifying_digests(entry.digests).items()) or [(_IDENTITY, entry_identity(entry))] for entry in batch
        ]
        wanted = {pair for pairs in identifying for pair in pairs}
        holding = self._holding(list_name, wanted)
        if not holding and len(wanted) == sum(map(len, identifying)):  # all new, no file twice: the usual import
            return batch, []
        fresh: list[NewEntry] = []
        claimed: dict[tuple[str, str], int] = {}  # identifying digest → its entry in `fresh` (one file twice in a batch)
        enriched: dict[str, NewEntry] = {}
        for entry, entry_pairs in zip(batch, identifying):
            holders = {row["id"]: row for pair in entry_pairs for row in holding.get(pair, ())}
            if not holders:
                earlier = next((claimed[pair] for pair in entry_pairs if pair in claimed), None)
                if earlier is None:
                    claimed.update((pair, len(fresh)) for pair in entry_pairs)
                    fresh.append(entry)
                elif (merged := _enriched(fresh[earlier], entry)) is not None:
                    fresh[earlier] = merged
                    claimed.update((pair, earlier) for pair in entry_pairs)
            elif all(row["status"] == "active" for row in holders.values()):
                oldest = min(holders.values(), key=lambda row: row["seq"])["id"]
                merged = _enriched(enriched.get(oldest) or _as_new_entry(self.get_entry(oldest)), entry)
                others = {row["identity"] for row in holders.values() if row["id"] != oldest}
                if merged is not None and entry_identity(merged) not in others:  # the list's identities stay unique
                    enriched[oldest] = merged
        return fresh, list(enriched.values())

    def _holding(self, list_name: str, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], list[Row]]:
        """The list's rows (id, status, identity, seq) holding each of the `wanted` (digest name,
        value) pairs, looked up through the digest indexes in chunks; (_IDENTITY, identity) pairs
        through the list's unique identity index."""
        holding: dict[tuple[str, str], list[Row]] = {}
        identities = sorted(value for name, value in wanted if name == _IDENTITY)
        for start in range(0, len(identities), _LISTED_CHUNK):
            chunk = identities[start : start + _LISTED_CHUNK]
            rows = self._query(
                f"SELECT id, status, identity, seq FROM entries WHERE list_name = ? AND identity IN ({', '.join('?' * len(chunk))})",
                [list_name, *chunk],
            )
            for row in rows:
                holding.setdefault((_IDENTITY, row["identity"]), []).append(row)
        pairs = sorted(pair for pair in wanted if pair[0] != _IDENTITY)
        for start in range(0, len(pairs), _LISTED_CHUNK):
            by_name: dict[str, list[str]] = {}
            for name, value in pairs[start : start + _LISTED_CHUNK]:
                by_name.setdefault(name, []).append(value)
            where = " OR ".join(f"{name} IN ({', '.join('?' * len(values))})" for name, values in by_name.items())
            rows = self._query(  # by the digest indexes only: a list_name condition can make the planner scan the list
                f"SELECT id, list_name, status, identity, seq, {', '.join(by_name)} FROM entries WHERE {where}",
                [value for values in by_name.values() for value in values],
            )
            for row in rows:
                if row["list_name"] == list_name:
                    for name in by_name:
                        if (name, row[name]) in wanted:
                            holding.setdefault((name, row[name]), []).append(row)
        return holding

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
        fresh_ids = iter(new_entry_ids(sum(1 for entry in batch if not entry.id)))
        rows = [
            (
                entry.id or next(fresh_ids),
                list_name,
                entry.category,
                entry.kind,
                *map(entry.digests.get, DIGEST_COLUMNS),
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
        ]
        try:
            self._execute_many(_UPSERT_ENTRY if replace else _INSERT_NEW_ENTRY, rows)
        except self.integrity_errors as exc:
            raise InvalidEntryError(f"entries conflict with the list's ({' '.join(str(exc).split())})") from None
        return self._execute(
            "INSERT INTO events (seq, at, action, list_name, entry_id, actor, detail) "
            "SELECT seq, ?, 'add', list_name, id, ?, '' FROM entries WHERE seq BETWEEN ? AND ?",
            (now, actor, first, first + len(batch) - 1),
        )[1]

    def get_entry(self, entry_id: str) -> Entry:
        rows = self._query("SELECT * FROM entries WHERE id = ?", (entry_id,))
        if not rows:
            raise NotFoundError(f"no entry {entry_id!r}")
        return _entry(rows[0])

    def _pages(self, select: str, clauses: list[str], params: list[Any], *, after: int, limit: int | None = None) -> Iterator[Row]:
        """Rows of `select ... WHERE clauses AND seq > after` by seq, read in pages keyed on seq so a
        long iteration never holds a lock, a cursor or a transaction open."""
        remaining = limit
        while remaining is None or remaining > 0:
            page = _BATCH if remaining is None else min(_BATCH, remaining)
            where = " AND ".join(["seq > ?", *clauses])
            rows = self._query(f"{select} WHERE {where} ORDER BY seq LIMIT {page}", [after, *params])
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1]["seq"]
            if remaining is not None:
                remaining -= len(rows)

    def entries(
        self, list_name: str | None = None, *, changed_since: int = 0, until: int | None = None
    ) -> Iterator[Entry]:
        clauses, params = _filters(list_name=list_name, until=until)
        return (_entry(row) for row in self._pages("SELECT * FROM entries", clauses, params, after=changed_since))

    def index_rows(self, *, changed_since: int = 0, until: int | None = None) -> Iterator[IndexRow]:
        # A fingerprint stored without codes (before adapters without index-role tensors got them)
        # has them computed here; its blob is read only then.
        uncoded = "CASE WHEN fp_codes = '{}' THEN fingerprint END AS uncoded"
        columns = ", ".join(("seq", "status", "url", "domain", "fp_codes", uncoded, *DIGEST_COLUMNS))
        clauses, params = _filters(until=until)
        for row in self._pages(f"SELECT {columns} FROM entries", clauses, params, after=changed_since):
            digests = {name: row[name] for name in DIGEST_COLUMNS if row[name]}
            codes = decode_codes(stored_codes(bytes(row["uncoded"])) if row["uncoded"] else row["fp_codes"])
            yield IndexRow(row["seq"], row["status"], digests, row["url"], row["domain"], codes)

    def _entries_where_in(self, column: str, values: list[Any], select: str = "SELECT * FROM entries") -> list[Entry]:
        found: list[Entry] = []
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            found += map(_entry, self._query(f"{select} WHERE {column} IN ({', '.join('?' * len(chunk))})", chunk))
        return found

    def entries_by_id(self, entry_ids: Iterable[str]) -> dict[str, Entry]:
        return {entry.id: entry for entry in self._entries_where_in("id", list(dict.fromkeys(entry_ids)))}

    def entries_by_seq(self, seqs: Iterable[int]) -> list[Entry]:
        changed = self._entries_where_in(
            "events.seq", sorted({int(seq) for seq in seqs}), "SELECT entries.* FROM events JOIN entries ON entries.id = events.entry_id"
        )
        return sorted({entry.id: entry for entry in changed}.values(), key=lambda e: e.seq)

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
            self._execute("UPDATE entries SET status = ?, seq = ? WHERE id = ?", (status, seq, entry_id))
        return dataclasses.replace(entry, status=status, seq=seq)

    def counts(self, list_name: str | None = None) -> dict[str, int]:
        where, params = ("WHERE list_name = ?", (list_name,)) if list_name is not None else ("", ())
        counts: dict[str, int] = {}
        for column in ("status", "kind", "category"):
            grouped = f"SELECT {column} AS value, count(*) AS n FROM entries {where} GROUP BY {column} ORDER BY {column}"
            for row in self._query(grouped, params):  # ordered: the backends group in different orders
                counts[f"{column}:{row['value']}"] = row["n"]
        totals = {"entries": "*", "fingerprints": "fingerprint", "urls": "url", "domains": "domain"}
        totals.update((f"digest:{name}", name) for name in DIGEST_COLUMNS)
        aliases = {key: f"c{i}" for i, key in enumerate(totals)}
        selects = ", ".join(f"count({column}) AS {aliases[key]}" for key, column in totals.items())
        expired = "count(CASE WHEN status != 'retracted' AND expires <= ? THEN 1 END) AS expired"
        row = self._query(f"SELECT {selects}, {expired} FROM entries {where}", (utc_now(), *params))[0]
        counts.update((key, row[alias]) for key, alias in aliases.items())
        counts["expired"] = row["expired"]
        return counts

    # -- events ----------------------------------------------------------------------------
    def events(self, *, since: int = 0, list_name: str | None = None, limit: int | None = None) -> Iterator[Event]:
        clauses, params = _filters(list_name=list_name)
        for row in self._pages("SELECT * FROM events", clauses, params, after=since, limit=limit):
            yield Event(row["seq"], row["at"], row["action"], row["list_name"], row["entry_id"], row["actor"], row["detail"])

    def last_seq(self) -> int:
        return int(self._query("SELECT coalesce(max(seq), 0) AS seq FROM events")[0]["seq"])

    # -- opinions --------------------------------------------------------------------------
    def add_opinion(self, opinion: Opinion) -> int:
        with self.transaction():
            entry = self.get_entry(opinion.entry_id)
            exists = self._query(
                "SELECT seq FROM opinions WHERE entry_id = ? AND by_name = ? AND at = ? AND opinion = ?",
                (opinion.entry_id, opinion.by, opinion.at, opinion.opinion),
            )
            if exists:
                return int(exists[0]["seq"])
            (seq,) = self._append_events([(opinion.opinion, entry.list, entry.id, opinion.by, opinion.reason)])
            self._execute(
                "INSERT INTO opinions (seq, entry_id, opinion, by_name, at, reason, origin) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, opinion.entry_id, opinion.opinion, opinion.by, opinion.at, opinion.reason, opinion.origin),
            )
        return seq

    def opinions(self, *, entry_id: str | None = None, origin: str | None = None, since: int = 0) -> list[Opinion]:
        clauses = ["seq > ?"]
        params: list[Any] = [since]
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
            self._execute(
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

    # -- bundle sync positions ----------------------------------------------------------------
    def sync_position(self, publisher: str, stream: str) -> int:
        rows = self._query("SELECT seq FROM sync_positions WHERE publisher = ? AND stream = ?", (publisher, stream))
        return int(rows[0]["seq"]) if rows else 0

    def set_sync_position(self, publisher: str, stream: str, seq: int) -> None:
        with self.transaction():
            self._execute(
                "INSERT INTO sync_positions (publisher, stream, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(publisher, stream) DO UPDATE SET seq = excluded.seq",
                (publisher, stream, seq),
            )

    # -- reference models ------------------------------------------------------------------------
    def add_base(self, name: str, fingerprint: Fingerprint, *, source: str = "", replace: bool = False) -> BaseInfo:
        _check_base_name(name)
        BaseModel(name, fingerprint)  # validates: a raw checkpoint fingerprint
        info = BaseInfo(name, fingerprint.key_id, fingerprint.key_check, fingerprint.scheme, len(fingerprint.sketches),
                        source, utc_now())
        with self.transaction():
            if self._query("SELECT 1 AS found FROM fuzzy_bases WHERE name = ?", (name,)):
                if not replace:
                    raise InvalidEntryError(f"a base named {name!r} is already registered (use --replace to overwrite it)")
                self._execute("DELETE FROM fuzzy_bases WHERE name = ?", (name,))
            others = [base for base in self._bases(fingerprint.key_id, fingerprint.key_check) if base.name != name]
            same = nearest_base(fingerprint, others)
            if same is not None and same.distance <= SAME_BASE_DISTANCE:
                raise InvalidEntryError(
                    f"it is base {same.base.name!r} again (relative distance {same.distance:.1e}); one model registered under "
                    f"two names splits its fingerprints between them: keep {same.base.name!r} (or remove it first)"
                )
            self._execute(
                f"INSERT INTO fuzzy_bases ({_BASE_COLUMNS}, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*dataclasses.astuple(info), fingerprint.to_bytes()),
            )
        return info

    def list_bases(self) -> list[BaseInfo]:
        return [_base_info(row) for row in self._query(f"SELECT {_BASE_COLUMNS} FROM fuzzy_bases ORDER BY name")]

    def remove_base(self, name: str) -> None:
        with self.transaction():
            if not self._execute("DELETE FROM fuzzy_bases WHERE name = ?", (name,))[1]:
                raise NotFoundError(f"no base named {name!r} is registered")

    def bases(self, key: FingerprintKey) -> list[BaseModel]:
        return self._bases(key.key_id, key.check)

    def _bases(self, key_id: str, key_check: str) -> list[BaseModel]:
        rows = self._query("SELECT name, fingerprint FROM fuzzy_bases WHERE key_id = ? AND key_check = ? ORDER BY name", (key_id, key_check))
        return [BaseModel(row["name"], Fingerprint.from_bytes(bytes(row["fingerprint"]))) for row in rows]

    def add_background(
        self, base: str, fingerprints: Iterable[Fingerprint], *, sources: Sequence[str] = ()
    ) -> list[BackgroundInfo]:
        fps = list(fingerprints)
        labels = list(sources) or [""] * len(fps)
        if len(labels) != len(fps):
            raise InvalidEntryError("add_background: give one source per fingerprint, or none")
        _check_base_name(base)
        for label in labels:
            check_text("source", label)
        added = []
        with self.transaction():
            existing = self._query("SELECT fingerprint FROM fuzzy_background WHERE base = ? LIMIT 1", (base,))
            known = [Fingerprint.from_bytes(bytes(existing[0]["fingerprint"]))] if existing else []
            Cohort(base, [*known, *fps])  # validates deltas, base and one key for every member
            for fp in fps:
                check_background_member(fp)
            for fp, source in zip(fps, labels, strict=True):
                blob = fp.to_bytes()
                info = BackgroundInfo(hashlib.sha256(blob).hexdigest(), base, fp.kind, fp.key_id, len(fp.sketches),
                                      source[:MAX_BACKGROUND_SOURCE], utc_now())
                inserted = self._execute(
                    f"INSERT INTO fuzzy_background ({_BACKGROUND_COLUMNS}, key_check, scheme, fingerprint) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                    (*dataclasses.astuple(info), fp.key_check, fp.scheme, blob),
                )[1]
                if inserted:
                    added.append(info)
        return added

    def list_background(self, base: str | None = None) -> list[BackgroundInfo]:
        where, params = ("WHERE base = ?", (base,)) if base is not None else ("", ())
        rows = self._query(f"SELECT {_BACKGROUND_COLUMNS} FROM fuzzy_background {where} ORDER BY base, added, id", params)
        return [_background_info(row) for row in rows]

    def background_members(self, base: str) -> list[tuple[BackgroundInfo, Fingerprint]]:
        rows = self._query(f"SELECT {_BACKGROUND_COLUMNS}, fingerprint FROM fuzzy_background WHERE base = ? ORDER BY added, id",
                           (base,))
        return [(_background_info(row), _background_fingerprint(row)) for row in rows]

    def remove_background(self, member_id: str) -> None:
        with self.transaction():
            ids = [
                row["id"]
                for row in self._query("SELECT id FROM fuzzy_background WHERE id LIKE ?", (member_id.lower() + "%",))
            ] if len(member_id) >= 8 and member_id.isalnum() else []
            if len(ids) != 1:
                ambiguous = " (ambiguous prefix)" if ids else ""
                raise NotFoundError(f"no single background model has id {member_id!r}{ambiguous}")
            self._execute("DELETE FROM fuzzy_background WHERE id = ?", (ids[0],))

    def cohorts(self, key: FingerprintKey) -> dict[str, Cohort]:
        members: dict[str, list[Fingerprint]] = {}
        for row in self._query(
            # ordered by id (the fingerprint's SHA-256), so every store holding the same members
            # calibrates bit for bit alike, whenever and in whatever order they were added
            "SELECT id, base, fingerprint FROM fuzzy_background WHERE key_id = ? AND key_check = ? ORDER BY base, id",
            (key.key_id, key.check),
        ):
            members.setdefault(row["base"], []).append(_background_fingerprint(row))
        return {base: Cohort(base, fps) for base, fps in members.items()}

    # -- API keys ----------------------------------------------------------------------------------
    def add_api_key(self, key: StoredApiKey) -> None:
        with self.transaction():
            self._execute(
                f"INSERT INTO api_keys ({_API_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.key_id, key.secret_sha256, key.name, " ".join(key.scopes), key.rate_per_second, key.created_at,
                 key.revoked_at),
            )

    def api_key(self, key_id: str) -> StoredApiKey | None:
        rows = self._query(f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
        return _api_key(rows[0]) if rows else None

    def api_keys(self) -> list[StoredApiKey]:
        return [_api_key(row) for row in self._query(f"SELECT {_API_KEY_COLUMNS} FROM api_keys ORDER BY created_at")]

    def revoke_api_key(self, key_id: str, at: float) -> bool:
        with self.transaction():
            return bool(self._execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (at, key_id)
            )[1])

    # -- resumable crawl jobs ----------------------------------------------------------------------
    def create_crawl_job(self, out_path: str, input_sha256: str, mode: str | None = None) -> int:
        with self.transaction():  # the writer's transaction hands out ids one at a time
            job_id = int(self._query("SELECT coalesce(max(id), 0) + 1 AS id FROM crawl_jobs")[0]["id"])
            self._execute(
                "INSERT INTO crawl_jobs (id, out_path, input_sha256, created_at, mode) VALUES (?, ?, ?, ?, ?)",
                (job_id, out_path, input_sha256, utc_now(), mode),
            )
        return job_id

    def add_crawl_targets(self, job_id: int, targets: Sequence[CrawlTargetRow]) -> set[int]:
        if not targets:
            return set()
        lines = [target.line for target in targets]
        with self.transaction():
            self._execute_many(
                "INSERT INTO crawl_targets (job_id, line, url, context) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(job_id, t.line, t.url, t.context) for t in targets],
            )
            stored = self._query(
                "SELECT line FROM crawl_targets WHERE job_id = ? AND line BETWEEN ? AND ?", (job_id, min(lines), max(lines))
            )
        return set(lines) - {row["line"] for row in stored}

    def find_crawl_job(self, out_path: str) -> CrawlJobState | None:
        rows = self._query(f"SELECT {_CRAWL_JOB_COLUMNS} FROM crawl_jobs WHERE out_path = ?", (out_path,))
        return CrawlJobState(**dict(rows[0])) if rows else None

    def crawl_job(self, job_id: int) -> CrawlJobState:
        rows = self._query(f"SELECT {_CRAWL_JOB_COLUMNS} FROM crawl_jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError(f"no crawl job {job_id}")
        return CrawlJobState(**dict(rows[0]))

    def crawl_progress(self, job_id: int) -> tuple[int, int]:
        row = self._query(
            "SELECT count(*) AS total, coalesce(sum(done), 0) AS done FROM crawl_targets WHERE job_id = ?", (job_id,)
        )[0]
        return int(row["total"]), int(row["done"])

    def pending_crawl_targets(self, job_id: int, *, after_line: int, limit: int) -> list[CrawlTargetRow]:
        rows = self._query(
            "SELECT line, url, context FROM crawl_targets WHERE job_id = ? AND done = 0 AND line > ? ORDER BY line LIMIT ?",
            (job_id, after_line, limit),
        )
        return [CrawlTargetRow(row["line"], row["url"], row["context"]) for row in rows]

    def mark_crawl_targets_done(self, job_id: int, urls: Iterable[str], out_offset: int) -> None:
        with self.transaction():
            self._execute_many("UPDATE crawl_targets SET done = 1 WHERE job_id = ? AND url = ?", [(job_id, url) for url in urls])
            self._execute("UPDATE crawl_jobs SET out_offset = ? WHERE id = ?", (out_offset, job_id))

    def finish_crawl_job(self, job_id: int) -> None:
        with self.transaction():
            self._execute("UPDATE crawl_jobs SET finished_at = ? WHERE id = ?", (utc_now(), job_id))

    # -- crawl jobs submitted over the API -------------------------------------------------------
    def add_leased_crawl_job(self, job: LeasedCrawlJob) -> None:
        with self.transaction():
            self._execute(
                "INSERT INTO api_crawl_jobs (id, key_id, mode, created_at, crawl_job_id) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.key_id, job.mode, job.created_at, job.crawl_job_id),
            )

    def leased_crawl_job(self, job_id: str) -> LeasedCrawlJob | None:
        rows = self._query(f"SELECT {_LEASED_JOB_COLUMNS} FROM api_crawl_jobs WHERE id = ?", (job_id,))
        return LeasedCrawlJob(**dict(rows[0])) if rows else None

    def leased_crawl_jobs(self, key_id: str | None, *, before: tuple[float, str] | None, limit: int) -> list[LeasedCrawlJob]:
        clauses: list[str] = []
        params: list[Any] = []
        if key_id is not None:
            clauses.append("key_id = ?")
            params.append(key_id)
        if before is not None:
            clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params.extend((before[0], before[0], before[1]))
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        rows = self._query(
            f"SELECT {_LEASED_JOB_COLUMNS} FROM api_crawl_jobs {where}ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)
        )
        return [LeasedCrawlJob(**dict(row)) for row in rows]

    def unfinished_crawl_jobs(self, key_id: str) -> int:
        rows = self._query("SELECT count(*) AS n FROM api_crawl_jobs WHERE key_id = ? AND finished_at IS NULL", (key_id,))
        return int(rows[0]["n"])

    def cancel_crawl_job(self, job_id: str, at: float) -> bool:
        with self.transaction():
            return bool(self._execute(
                "UPDATE api_crawl_jobs SET finished_at = ?, cancelled_at = ?, lease_until = NULL WHERE id = ? AND finished_at IS NULL",
                (at, at, job_id),
            )[1])

    def claim_crawl_job(self, owner: str, now: float, lease_until: float) -> LeasedCrawlJob | None:
        with self.transaction():
            rows = self._query(
                "SELECT id FROM api_crawl_jobs WHERE finished_at IS NULL AND (lease_until IS NULL OR lease_until < ?) "
                "ORDER BY created_at LIMIT 1",
                (now,),
            )
            if not rows:
                return None
            self._execute("UPDATE api_crawl_jobs SET lease_owner = ?, lease_until = ? WHERE id = ?", (owner, lease_until, rows[0]["id"]))
            return self.leased_crawl_job(rows[0]["id"])

    def renew_crawl_lease(self, job_id: str, owner: str, lease_until: float) -> bool:
        with self.transaction():
            return bool(self._execute(
                "UPDATE api_crawl_jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND finished_at IS NULL",
                (lease_until, job_id, owner),
            )[1])

    def end_crawl_lease(self, job_id: str, owner: str, *, finished_at: float | None, error: str | None = None) -> None:
        with self.transaction():
            if finished_at is None:
                self._execute("UPDATE api_crawl_jobs SET lease_until = NULL WHERE id = ? AND lease_owner = ?", (job_id, owner))
            else:
                self._execute(
                    "UPDATE api_crawl_jobs SET finished_at = ?, error = ?, lease_until = NULL "
                    "WHERE id = ? AND lease_owner = ? AND finished_at IS NULL",  # a cancelled job stays cancelled
                    (finished_at, error, job_id, owner),
                )


def _filters(*, list_name: str | None = None, until: int | None = None) -> tuple[list[str], list[Any]]:
    """WHERE clauses (and their parameters) restricting rows to one list and/or seq ≤ until."""
    clauses: list[str] = []
    params: list[Any] = []
    if list_name is not None:
        clauses.append("list_name = ?")
        params.append(list_name)
    if until is not None:
        clauses.append("seq <= ?")
        params.append(until)
    return clauses, params
