"""Several replicas on one store (separate connections, separate processes), on each backend.

A change written through one replica reaches every other replica's matcher within its refresh
interval (the matcher polls the event sequence); the same bundle imported by two replicas at
once is applied once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from modelsieve.hashlists.bundles import PAUSE_ENV, export_list
from modelsieve.hashlists.curation import dispute, retract
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import Match, NewEntry
from modelsieve.hashlists.signing import generate_key_files, load_private_key
from modelsieve.hashlists.store import open_store
from modelsieve.hashlists.trust import trust_publisher
from tests.hashlists_fixtures import lora_fingerprint
from tests.store_backends import StoreLocations

REFRESH = 0.2  # seconds between a replica's looks at the event sequence
ENTRIES = 500


def seen_within(matcher: Matcher, digests: dict[str, str], wanted: Callable[[list[Match]], bool], bound: float = 15.0) -> bool:
    """Whether the matcher's answer satisfies `wanted` before `bound` seconds pass (polled)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if wanted(matcher.match_digests(digests)):
            return True
        time.sleep(REFRESH / 2)
    return False


def test_changes_through_one_replica_reach_every_other(store_locations: StoreLocations) -> None:
    location = store_locations.new()
    digests = {"sha256": "ab" * 32}
    with open_store(location) as writer, open_store(location) as reader_store:
        writer.create_list("main")
        reader = Matcher(reader_store, refresh_interval=REFRESH)
        assert reader.match_digests(digests) == []
        entry = writer.add_entry("main", NewEntry(category="2c", digests=digests))
        assert entry is not None
        assert seen_within(reader, digests, lambda ms: [m.status for m in ms] == ["active"]), "an addition"
        dispute(writer, entry.id, reason="benign")
        assert seen_within(reader, digests, lambda ms: [m.status for m in ms] == ["disputed"]), "a dispute"
        retract(writer, entry.id, reason="false positive")
        assert seen_within(reader, digests, lambda ms: ms == []), "a retraction"


def test_a_replica_judges_index_hits_by_the_entry_as_it_is_now(store_locations: StoreLocations) -> None:
    """Before its matcher refreshes, a replica already sees another's dispute and retraction."""
    location = store_locations.new()
    digests, url, fingerprint = {"sha256": "cd" * 32}, "https://undress.example.com/app", lora_fingerprint(3)
    with open_store(location) as writer, open_store(location) as reader_store:
        writer.create_list("main")
        listed = [
            writer.add_entry("main", NewEntry(category="2c", digests=digests)),
            writer.add_entry("main", NewEntry(category="nudify-service", url=url)),
            writer.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=fingerprint.to_bytes())),
        ]
        reader = Matcher(reader_store, refresh_interval=3600)  # its indexes keep the seqs of the additions
        lookups = (
            lambda: reader.match_digests(digests),
            lambda: reader.match_url(url + "/upload"),
            lambda: reader.match_fingerprint(fingerprint),
        )
        seq = reader.seq
        for entry, lookup in zip(listed, lookups, strict=True):
            assert entry is not None and [(m.entry_id, m.status) for m in lookup()] == [(entry.id, "active")]
            dispute(writer, entry.id, reason="benign")
            assert [(m.entry_id, m.status) for m in lookup()] == [(entry.id, "disputed")]
            retract(writer, entry.id, reason="false positive")
            assert lookup() == []
        assert reader.seq == seq, "the matcher has not refreshed: the answers came from the current rows"


def test_one_bundle_imported_by_two_replicas_at_once_is_applied_once(tmp_path: Path, store_locations: StoreLocations) -> None:
    generate_key_files(tmp_path / "pub.key", tmp_path / "pub.pub")
    with open_store(tmp_path / "pub.db") as publisher:
        publisher.create_list("reports", publisher="pub")
        publisher.add_entries("reports", (NewEntry(category="2c", digests={"md5": f"{i:032x}"}) for i in range(ENTRIES)))
        export_list(publisher, "reports", load_private_key(tmp_path / "pub.key"), tmp_path / "b.jsonl")
    location = store_locations.new()
    with open_store(location) as store:
        trust_publisher(store, "pub", (tmp_path / "pub.pub").read_text(), "full")
        events_before = store.last_seq()

    def start(marker: str | None) -> subprocess.Popen[bytes]:
        code = "import sys; from modelsieve.api.cli import main; sys.exit(main())"
        env = {**os.environ, PAUSE_ENV: marker} if marker else dict(os.environ)
        argv = [sys.executable, "-c", code, "list", "import", str(tmp_path / "b.jsonl"), "--db", location]
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    marker = tmp_path / "pause"
    first = start(str(marker))
    deadline = time.monotonic() + 60
    while not Path(f"{marker}.paused").exists():  # the first import holds its transaction open
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    second = start(None)  # ... while the second one starts: it waits for the writer lock
    time.sleep(0.5)
    Path(f"{marker}.resume").touch()
    results = [(p.wait(timeout=60), p.communicate()) for p in (first, second)]
    assert results[0][0] == 0 and f"{ENTRIES} entries".encode() in results[0][1][0], results[0]
    assert results[1][0] == 2 and b"replayed bundle" in results[1][1][1], results[1]
    with open_store(location) as store:
        assert store.counts()["entries"] == ENTRIES
        assert store.last_seq() == events_before + 1 + ENTRIES  # the list's creation and one add each


def test_concurrent_writers_get_distinct_sequence_numbers(store_locations: StoreLocations) -> None:
    location = store_locations.new()
    with open_store(location) as first, open_store(location) as second:
        first.create_list("main")

        def write(store_index: int, thread: int) -> None:
            store = (first, second)[store_index]
            for i in range(10):
                store.add_entries("main", [NewEntry(category="2c", digests={"md5": f"{store_index}{thread:03d}{i:028x}"})])

        threads = [threading.Thread(target=write, args=(s, t)) for s in (0, 1) for t in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [event.seq for event in first.events()] == list(range(1, 62))
        assert sorted(entry.seq for entry in second.entries()) == list(range(2, 62))
