"""The store interface: what every backend (SQLite embedded, PostgreSQL for servers) provides.

A store holds lists, entries, the append-only event log, opinions, the trust store and the
positions of bundle imports. It is persistence only: matching (`matcher.py`) and exchange
(`bundles.py`) are written against this interface, never against a backend.

Every change appends an event whose sequence number also becomes the entry's `seq`, so a reader
can ask "what changed since N" (the matcher's refresh, delta export) without scanning everything.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

from modelsieve.hashlists.errors import StoreUnavailableError
from modelsieve.fingerprint.calibration import Cohort
from modelsieve.fingerprint.fuzzy import BaseModel, Fingerprint, FingerprintKey
from modelsieve.hashlists.model import (
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
    new_entry_id,
)


class Store(abc.ABC):
    """Lists, entries, events, opinions, trust, sync positions, reference models, API keys and
    crawl job state; see the module docstring.

    `schema_version` is the store's schema version once opened; `upgraded_from` the version it had
    before (equal when nothing was migrated, 0 for a store created by the opening). `read_only`:
    every change is refused (a SQLite file this process cannot write).
    """

    schema_version: int = 0
    upgraded_from: int = 0
    read_only: bool = False

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection(s)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """One atomic unit of work: everything inside commits together or not at all.

        Nested calls join the outermost transaction. Readers on other connections keep seeing
        the state before it until it commits.
        """

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the store lives (a path or a DSN without credentials), for messages."""

    # -- lists -----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_list(
        self, name: str, *, publisher: str = "local", description: str = "", origin_list: str | None = None
    ) -> ListInfo:
        """A new list; `origin_list` is the publisher's name of it when it arrives by import."""

    @abc.abstractmethod
    def get_list(self, name: str) -> ListInfo:
        """The list called `name`; NotFoundError when there is none."""

    @abc.abstractmethod
    def find_list(self, publisher: str, origin_list: str) -> ListInfo | None:
        """The local copy of a publisher's list, if one was imported."""

    @abc.abstractmethod
    def lists(self) -> list[ListInfo]:
        """Every list, by name."""

    # -- entries ---------------------------------------------------------------------------
    @abc.abstractmethod
    def add_entries(
        self,
        list_name: str,
        entries: Iterable[NewEntry],
        *,
        actor: str = "",
        origin: str | None = None,
        replace: bool = False,
    ) -> int:
        """Add entries, one `add` event each, in one transaction; returns how many were added.

        Entries are validated first: an invalid one raises InvalidEntryError and adds nothing.
        An entry listing what the list already lists (same `entry_identity`) is skipped, so the
        same import twice adds nothing. One sharing an identifying digest with an entry of the list
        (the same file) adds its other digests and fingerprint to that entry instead, or nothing
        when that entry is retracted or disputed (a false positive listed again stays out).
        With `replace` (bundle imports) an entry whose id exists is overwritten instead, and
        entries apply as published. `origin` is the publisher of imported entries.
        """

    def add_entry(self, list_name: str, entry: NewEntry, *, actor: str = "") -> Entry | None:
        """Add one entry and return it as stored; None when the list already lists the same thing."""
        entry_id = entry.id or new_entry_id()
        with self.transaction():
            if not self.add_entries(list_name, [dataclasses.replace(entry, id=entry_id)], actor=actor):
                return None
            return self.get_entry(entry_id)

    @abc.abstractmethod
    def get_entry(self, entry_id: str) -> Entry:
        """One entry (with its sensitive note); NotFoundError when there is none."""

    @abc.abstractmethod
    def entries(
        self, list_name: str | None = None, *, changed_since: int = 0, until: int | None = None
    ) -> Iterator[Entry]:
        """Entries (of one list, or all) whose last change has seq in (changed_since, until], by seq."""

    @abc.abstractmethod
    def index_rows(self, *, changed_since: int = 0, until: int | None = None) -> Iterator[IndexRow]:
        """What the matcher indexes of each entry changed in (changed_since, until], by seq."""

    @abc.abstractmethod
    def entries_by_id(self, entry_ids: Iterable[str]) -> dict[str, Entry]:
        """The entries that exist among `entry_ids`."""

    @abc.abstractmethod
    def entries_by_seq(self, seqs: Iterable[int]) -> list[Entry]:
        """The entries changed by the events with these sequence numbers, each once and as it is now.

        An in-memory index holds the seq an entry had when it was indexed; this resolves it through
        the event log to the entry's current row, so an entry retracted or disputed since (on any
        replica) is judged by its current status, not by the state the index saw."""

    @abc.abstractmethod
    def find_digests(self, digests: Mapping[str, str]) -> list[Entry]:
        """Entries sharing any of these (normalised) digest values; AutoV3 also by 12-hex prefix."""

    @abc.abstractmethod
    def set_status(self, entry_id: str, status: str, *, actor: str = "", reason: str = "") -> Entry:
        """Change an entry's status (retract, dispute, reactivate); appends an event."""

    @abc.abstractmethod
    def counts(self, list_name: str | None = None) -> dict[str, int]:
        """Entry counts by status, kind, category and digest name (keys like `status:active`), and
        `expired`: entries not retracted whose expiry has passed (they no longer match)."""

    # -- events ----------------------------------------------------------------------------
    @abc.abstractmethod
    def events(self, *, since: int = 0, list_name: str | None = None, limit: int | None = None) -> Iterator[Event]:
        """Events with seq > since, oldest first."""

    @abc.abstractmethod
    def last_seq(self) -> int:
        """The sequence number of the latest event (0 for an empty store)."""

    # -- opinions --------------------------------------------------------------------------
    @abc.abstractmethod
    def add_opinion(self, opinion: Opinion) -> int:
        """Record a platform's dispute/confirm of an entry; returns the event's seq."""

    @abc.abstractmethod
    def opinions(self, *, entry_id: str | None = None, origin: str | None = None, since: int = 0) -> list[Opinion]:
        """Opinions recorded after seq `since`, about one entry or about one publisher's entries."""

    # -- trust -----------------------------------------------------------------------------
    @abc.abstractmethod
    def put_trusted_key(self, key: TrustedKey) -> None:
        """Add a publisher's key to the trust store, or change its level."""

    @abc.abstractmethod
    def trusted_key(self, name: str) -> TrustedKey | None:
        """The trusted key of a publisher, if any."""

    @abc.abstractmethod
    def trusted_keys(self) -> list[TrustedKey]:
        """Every trusted publisher, by name."""

    # -- bundle sync positions ----------------------------------------------------------------
    @abc.abstractmethod
    def sync_position(self, publisher: str, stream: str) -> int:
        """The last publisher sequence number applied from a publisher's stream (a list or opinions)."""

    @abc.abstractmethod
    def set_sync_position(self, publisher: str, stream: str, seq: int) -> None:
        """Record that a publisher's stream has been applied up to `seq`."""

    # -- reference models: registered bases and their benign background cohorts ---------------
    @abc.abstractmethod
    def add_base(self, name: str, fingerprint: Fingerprint, *, source: str = "", replace: bool = False) -> BaseInfo:
        """Register a raw checkpoint fingerprint as base `name`. Refuses deltas, LoRAs, the weights
        of another registered base again (within SAME_BASE_DISTANCE: one model under two names
        splits its fingerprints between them) and, without `replace`, a name already taken."""

    @abc.abstractmethod
    def list_bases(self) -> list[BaseInfo]:
        """Every registered base, by name."""

    @abc.abstractmethod
    def remove_base(self, name: str) -> None:
        """Forget base `name`; NotFoundError when there is none."""

    @abc.abstractmethod
    def bases(self, key: FingerprintKey) -> list[BaseModel]:
        """The registered bases fingerprinted with `key`: checkpoints are fingerprinted as deltas from them."""

    @abc.abstractmethod
    def add_background(
        self, base: str, fingerprints: Iterable[Fingerprint], *, sources: Sequence[str] = ()
    ) -> list[BackgroundInfo]:
        """Add benign delta fingerprints to base `base`'s cohort in one transaction; returns the new members.

        `sources` (optional, one per fingerprint) says where each came from. A fingerprint already
        in the cohort is skipped; raw fingerprints, deltas of another base and a key other than
        the cohort's are refused.
        """

    @abc.abstractmethod
    def list_background(self, base: str | None = None) -> list[BackgroundInfo]:
        """Cohort members (of one base, or all), by base then time added."""

    @abc.abstractmethod
    def background_members(self, base: str) -> list[tuple[BackgroundInfo, Fingerprint]]:
        """Base `base`'s cohort members with their fingerprints (for signed cohort bundles), by time added."""

    @abc.abstractmethod
    def remove_background(self, member_id: str) -> None:
        """Drop one cohort member by id (or a unique id prefix of 8+ hex digits)."""

    @abc.abstractmethod
    def cohorts(self, key: FingerprintKey) -> dict[str, Cohort]:
        """Each base's background cohort of benign derived models taken with `key`, by base name."""

    # -- API keys (their secrets' digests; `api.http.auth` makes and checks the keys) ----------
    @abc.abstractmethod
    def add_api_key(self, key: StoredApiKey) -> None:
        """Store a new API key."""

    @abc.abstractmethod
    def api_key(self, key_id: str) -> StoredApiKey | None:
        """The API key with this id (live or revoked), if any."""

    @abc.abstractmethod
    def api_keys(self) -> list[StoredApiKey]:
        """Every API key, oldest first."""

    @abc.abstractmethod
    def revoke_api_key(self, key_id: str, at: float) -> bool:
        """Mark a live key revoked at time `at`; False when there is no live key with that id."""

    # -- resumable crawl jobs (`crawler.job`: targets and how far the output is) ---------------
    @abc.abstractmethod
    def create_crawl_job(self, out_path: str, input_sha256: str, mode: str | None = None) -> int:
        """A new crawl job writing to `out_path` in `mode`; its id. Call in the transaction adding its targets."""

    @abc.abstractmethod
    def add_crawl_targets(self, job_id: int, targets: Sequence[CrawlTargetRow]) -> set[int]:
        """Add a batch of targets; returns the lines skipped because the job already has their URL."""

    @abc.abstractmethod
    def find_crawl_job(self, out_path: str) -> CrawlJobState | None:
        """The crawl job writing to `out_path`, if any."""

    @abc.abstractmethod
    def crawl_job(self, job_id: int) -> CrawlJobState:
        """The crawl job with this id; NotFoundError when there is none."""

    @abc.abstractmethod
    def crawl_progress(self, job_id: int) -> tuple[int, int]:
        """(targets, targets done) of a crawl job."""

    @abc.abstractmethod
    def pending_crawl_targets(self, job_id: int, *, after_line: int, limit: int) -> list[CrawlTargetRow]:
        """Up to `limit` targets not yet done, after input line `after_line`, in input order."""

    @abc.abstractmethod
    def mark_crawl_targets_done(self, job_id: int, urls: Iterable[str], out_offset: int) -> None:
        """Mark URLs done together with the output's length once their lines are durable (one transaction)."""

    @abc.abstractmethod
    def finish_crawl_job(self, job_id: int) -> None:
        """Record that every target of the job is done."""

    # -- crawl jobs submitted over the API, run by whichever server process holds the lease ---
    @abc.abstractmethod
    def add_leased_crawl_job(self, job: LeasedCrawlJob) -> None:
        """Store a new API crawl job, unleased."""

    @abc.abstractmethod
    def leased_crawl_job(self, job_id: str) -> LeasedCrawlJob | None:
        """The API crawl job with this id, if any."""

    @abc.abstractmethod
    def leased_crawl_jobs(self, key_id: str | None, *, before: tuple[float, str] | None, limit: int) -> list[LeasedCrawlJob]:
        """Up to `limit` API crawl jobs of `key_id` (every key's with None), newest first, created
        before `before` (a job's `(created_at, id)`: where the previous page ended)."""

    @abc.abstractmethod
    def unfinished_crawl_jobs(self, key_id: str) -> int:
        """How many of `key_id`'s API crawl jobs are queued or running."""

    @abc.abstractmethod
    def cancel_crawl_job(self, job_id: str, at: float) -> bool:
        """Finish an unfinished job as cancelled at `at` (its lease holder stops when it next renews);
        False when it has already finished."""

    @abc.abstractmethod
    def claim_crawl_job(self, owner: str, now: float, lease_until: float) -> LeasedCrawlJob | None:
        """Atomically lease the oldest unfinished job whose lease lapsed before `now` to `owner`."""

    @abc.abstractmethod
    def renew_crawl_lease(self, job_id: str, owner: str, lease_until: float) -> bool:
        """Extend `owner`'s lease; False when it was lost (another process took the job, or it was cancelled)."""

    @abc.abstractmethod
    def end_crawl_lease(self, job_id: str, owner: str, *, finished_at: float | None, error: str | None = None) -> None:
        """Give `owner`'s lease back: as finished (at `finished_at`, failed when `error`) or, with
        `finished_at` None, for another process to resume at once."""


def is_postgres_location(location: str | os.PathLike[str]) -> bool:
    """Whether a --db value names a PostgreSQL database (a postgresql:// connection URI)."""
    return os.fspath(location).startswith(("postgresql://", "postgres://"))


def open_store(location: str | os.PathLike[str] | None = None, *, upgrade: bool = False, existing: bool = False) -> Store:
    """The store at `location` (default `$MODELSIEVE_DB`, else the user data folder's SQLite file).

    A `postgresql://` connection URI opens the PostgreSQL backend (the `postgres` extra), anything
    else a SQLite file. `upgrade` applies missing schema migrations where the backend waits to be
    told (PostgreSQL; the embedded SQLite store always upgrades itself). `existing` refuses to
    start a new SQLite store: commands that only look things up must not answer "none" from an
    empty store made by a typo in `--db`.
    """
    # Backends import this module, so they are imported here, when asked for.
    from modelsieve.hashlists.db import DB_ENV

    target = os.fspath(location) if location is not None else os.environ.get(DB_ENV) or None
    if target is not None and is_postgres_location(target):
        try:
            from modelsieve.hashlists.postgres_store import PostgresStore
        except ImportError as exc:
            raise StoreUnavailableError(
                f"a PostgreSQL store needs psycopg: pip install 'modelsieve[postgres]' ({exc})"
            ) from None
        return PostgresStore(target, upgrade=upgrade)
    from modelsieve.hashlists.sqlite_store import SQLiteStore

    return SQLiteStore(target, existing=existing)
