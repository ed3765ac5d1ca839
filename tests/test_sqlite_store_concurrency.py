"""The SQLite store answers lookups from the last committed state while an import holds its writer.

Real files and real threads; every wait is on an Event or a future with a generous timeout, so a
lookup that blocks behind the writer fails the test instead of hanging it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from modelsieve.hashlists import sql_store
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore

WAIT = 10.0  # seconds; generous, only reached when something is blocked
T = TypeVar("T")


def sha(seed: str) -> dict[str, str]:
    return {"sha256": hashlib.sha256(seed.encode()).hexdigest()}


def aside(work: Callable[[], T]) -> T:
    """`work()` run on another thread (as the API's thread pool would); fails if it blocks."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(work).result(timeout=WAIT)
    finally:
        pool.shutdown(wait=False)  # a blocked lookup must fail the test, not hang it


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "store.db")
    store.create_list("main", publisher="platform-a")
    yield store
    store.close()


def test_lookups_during_a_paused_import_see_committed_entries_only(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    committed = store.add_entry("main", NewEntry(category="2c", digests=sha("committed")))
    assert committed is not None
    matcher = Matcher(store, refresh_interval=0)  # refreshes from the store on every lookup
    paused, resume = threading.Event(), threading.Event()

    def incoming() -> Iterator[NewEntry]:
        for i in range(sql_store._BATCH + 1):  # the first full batch reaches the file, uncommitted
            yield NewEntry(category="2c", digests=sha(f"incoming {i}"))
        paused.set()
        resume.wait(timeout=60)
        yield NewEntry(category="2c", digests=sha("last"))

    imported: list[int] = []
    writer = threading.Thread(target=lambda: imported.append(store.add_entries("main", incoming())))
    writer.start()
    try:
        assert paused.wait(WAIT)
        assert aside(lambda: [e.id for e in store.find_digests(sha("committed"))]) == [committed.id]
        assert aside(lambda: store.find_digests(sha("incoming 0"))) == []
        assert aside(lambda: [e.id for e in store.entries_by_seq(range(1, 3 * sql_store._BATCH))]) == [committed.id]
        assert aside(lambda: [m.entry_id for m in matcher.match_digests(sha("committed"))]) == [committed.id]
        assert aside(lambda: matcher.match_digests(sha("incoming 0"))) == []
        assert writer.is_alive() and not imported, "the lookups finished while the import was still open"
    finally:
        resume.set()
        writer.join(WAIT)
    assert imported == [sql_store._BATCH + 2]
    assert [e.digests for e in store.find_digests(sha("incoming 0"))] == [sha("incoming 0")]
    assert len(matcher.match_digests(sha("last"))) == 1


def test_a_transaction_reads_its_own_writes_that_other_threads_cannot_see_yet(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    seen_inside: list[object] = []
    seen_aside: list[object] = []
    before = store.last_seq()
    with store.transaction():
        store.add_entries("main", [NewEntry(category="2c", digests=sha("pending"))])
        with store.transaction():  # nested: still the same open transaction
            seen_inside.append([e.digests for e in store.find_digests(sha("pending"))])
        seen_inside.append(len(store.entries_by_seq(range(1, 10))))
        seen_inside.append(store.last_seq())
        seen_aside.append(aside(lambda: store.find_digests(sha("pending"))))
        seen_aside.append(aside(store.last_seq))
    assert seen_inside == [[sha("pending")], 1, before + 1]
    assert seen_aside == [[], before]
    assert aside(lambda: [e.digests for e in store.find_digests(sha("pending"))]) == [sha("pending")]


def test_a_rolled_back_transaction_leaves_nothing_and_reads_move_off_the_writer(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    with pytest.raises(RuntimeError), store.transaction():
        store.add_entries("main", [NewEntry(category="2c", digests=sha("rolled back"))])
        raise RuntimeError("abandon the import")
    assert store.find_digests(sha("rolled back")) == []
    held, release = threading.Event(), threading.Event()

    def hold_writer() -> None:
        with store.transaction():
            held.set()
            release.wait(timeout=60)

    writer = threading.Thread(target=hold_writer)
    writer.start()
    try:
        assert held.wait(WAIT)
        assert aside(store.last_seq) == store.last_seq() == 1  # the list's creation; this thread left its transaction
    finally:
        release.set()
        writer.join(WAIT)


def test_close_closes_both_connections_writer_last(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path)
    store.create_list("main", publisher="platform-a")
    assert store.find_digests(sha("x")) == []  # the reader has been used
    store.close()
    assert not Path(f"{path}-wal").exists(), "the writer, closed last, checkpoints and removes the WAL"
    with pytest.raises(Exception, match="closed"):
        store.find_digests(sha("x"))
    reopened = SQLiteStore(path)
    assert reopened.get_list("main").publisher == "platform-a"
    reopened.close()
