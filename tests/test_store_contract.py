"""The store contract, on every backend (SQLite, PostgreSQL): entries, lists, events, opinions, trust, transactions."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from modelsieve.fingerprint.digests import DIGEST_NAMES
from modelsieve.hashlists.errors import InvalidEntryError, NotFoundError
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import DIGEST_LENGTHS, NewEntry, Opinion, TrustedKey, utc_now
from modelsieve.hashlists import sql_store
from modelsieve.hashlists.store import Store, open_store
from tests.hashlists_fixtures import lora_fingerprint
from tests.store_backends import StoreLocations


FINGERPRINT = lora_fingerprint(1).to_bytes()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_entries_keep_every_field_and_normalise_digests(store: Store) -> None:
    entry = store.add_entry(
        "main",
        NewEntry(
            category="2c",
            kind="lora",
            digests={"SHA256": sha("a").upper(), "crc32": "0D4A1185", "autov3": "ABCDEF012345"},
            fingerprint=FINGERPRINT,
            source="hotline-x",
            evidence="fuzzy",
            first_seen="2026-01-02",
            expires="2030-01-01T00:00:00+02:00",
            note="a title naming someone",
        ),
    )
    assert entry is not None
    again = store.get_entry(entry.id)
    assert again == entry
    assert again.digests == {"sha256": sha("a"), "crc32": "0d4a1185", "autov3": "abcdef012345"}
    assert (again.first_seen, again.expires) == ("2026-01-02T00:00:00Z", "2029-12-31T22:00:00Z")
    assert again.source == "hotline-x" and again.fingerprint == FINGERPRINT and again.note == "a title naming someone"
    assert "naming" not in repr(again), "the sensitive note must never appear in a repr (logs)"
    assert "note" not in again.to_json() and again.to_json(include_note=True)["note"] == "a title naming someone"


def test_source_defaults_to_the_list_publisher(store: Store) -> None:
    entry = store.add_entry("main", NewEntry(category="2c", digests={"md5": "0" * 32}))
    assert entry is not None and entry.source == "platform-a"


@pytest.mark.parametrize(
    "entry, message",
    [
        (NewEntry(category="2c"), "at least one digest"),
        (NewEntry(category="3", digests={"md5": "0" * 32}), "category"),
        (NewEntry(category="2c", digests={"md5": "0" * 31}), "32 hex"),
        (NewEntry(category="2c", digests={"sha512": "0" * 128}), "unknown digest"),
        (NewEntry(category="2c", url="https://x.example/"), "nudify-service"),
        (NewEntry(category="nudify-service", digests={"md5": "0" * 32}), "URL and domain entries"),
        (NewEntry(category="2c", digests={"md5": "0" * 32}, first_seen="yesterday"), "ISO 8601"),
        (NewEntry(category="2c", fingerprint=b"MSFP\x01garbage"), "invalid fingerprint"),
    ],
)
def test_invalid_entries_are_refused_and_add_nothing(store: Store, entry: NewEntry, message: str) -> None:
    good = NewEntry(category="2c", digests={"sha1": "1" * 40})
    with pytest.raises(InvalidEntryError, match=message):
        store.add_entries("main", [good, entry])
    assert store.counts()["entries"] == 0


def test_the_same_thing_is_listed_once_per_list(store: Store) -> None:
    entry = NewEntry(category="2c", digests={"sha256": sha("x")})
    assert store.add_entries("main", [entry, entry]) == 1
    assert store.add_entries("main", [NewEntry(category="2c", digests={"sha256": sha("x").upper()})]) == 0
    store.create_list("other")
    assert store.add_entries("other", [entry]) == 1


def test_a_retracted_or_disputed_file_listed_again_with_other_digests_stays_out(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partner's hash list, re-imported a month later with a new blake3 column, added its retracted
    false positive again as a new active entry (the entry's identity is its exact set of digests)."""
    monkeypatch.setattr(sql_store, "_LISTED_CHUNK", 7)  # several lookups per batch
    false_positive = store.add_entry("main", NewEntry(category="2c", digests={"sha256": sha("fp"), "md5": "a" * 32}))
    disputed = store.add_entry("main", NewEntry(category="2c", digests={"sha1": "b" * 40}))
    assert false_positive is not None and disputed is not None
    store.set_status(false_positive.id, "retracted", reason="false positive")
    store.set_status(disputed.id, "disputed", reason="suspected false positive")
    again = [
        NewEntry(category="2c", digests={"sha256": sha("fp"), "blake3": "c" * 64}),
        NewEntry(category="2c", digests={"md5": "A" * 32, "crc32": "0D4A1185"}),
        NewEntry(category="2c", digests={"sha1": "b" * 40, "autov2": "0123456789"}),
    ]
    others = [NewEntry(category="2c", digests={"sha256": sha(f"other {i}")}) for i in range(20)]
    assert store.add_entries("main", [*again, *others]) == len(others)
    assert {e.status for e in store.entries("main") if e.id in (false_positive.id, disputed.id)} == {"retracted", "disputed"}
    # only identifying digests count: a CRC32 in common says nothing about the file
    assert store.add_entries("main", [NewEntry(category="2c", digests={"crc32": "0D4A1185"})]) == 1
    store.create_list("other")  # another list decides for itself
    assert store.add_entries("other", again) == len(again)


def test_a_file_listed_again_with_more_digests_enriches_its_entry(store: Store) -> None:
    """A file listed hash-only and then added whole (digests and fingerprint) became two entries:
    both matched, and retracting the one a match named left the other matching."""
    first = store.add_entry("main", NewEntry(category="2c", digests={"sha256": sha("file")}, note="as reported"))
    assert first is not None
    whole = NewEntry(category="2b", kind="lora", digests={"sha256": sha("file"), "blake3": "b" * 64, "crc32": "0d4a1185"}, fingerprint=FINGERPRINT)
    assert store.add_entries("main", [whole]) == 0
    [entry] = store.entries("main")
    assert (entry.id, entry.category, entry.kind, entry.note) == (first.id, "2c", "lora", "as reported"), "the listed entry keeps its judgement"
    assert entry.digests == {"sha256": sha("file"), "blake3": "b" * 64, "crc32": "0d4a1185"} and entry.fingerprint == FINGERPRINT
    assert entry.seq > first.seq and [e.action for e in store.events()][-1] == "add"
    assert [m.entry_id for m in Matcher(store).match_digests({"blake3": "b" * 64})] == [first.id]
    seq = store.last_seq()
    assert store.add_entries("main", [whole, NewEntry(category="2c", digests={"blake3": "B" * 64})]) == 0
    assert store.last_seq() == seq, "nothing new: nothing written"
    twice = [NewEntry(category="2c", digests={"md5": "d" * 32}), NewEntry(category="2c", digests={"md5": "d" * 32, "sha1": "e" * 40})]
    assert store.add_entries("main", twice) == 1, "one file twice in one import is one entry"
    assert [e.digests for e in store.entries("main") if "md5" in e.digests] == [{"md5": "d" * 32, "sha1": "e" * 40}]
    store.set_status(first.id, "retracted")
    assert store.add_entries("main", [NewEntry(category="2c", digests={"sha256": sha("file"), "sha1": "c" * 40})]) == 0
    assert store.get_entry(first.id).digests.get("sha1") is None and store.counts("main")["entries"] == 2


def test_an_expired_file_listed_again_matches_for_as_long_as_the_new_listing_says(store: Store) -> None:
    """A list re-imported with fresh expiry dates left every expired entry expired: the same
    digests were "already listed", so the file never matched again."""
    digests = {"sha256": sha("yearly")}
    entry = store.add_entry("main", NewEntry(category="2c", digests=digests, expires="2001-01-01"))
    assert entry is not None and entry.expired()
    assert store.add_entries("main", [NewEntry(category="2c", digests=digests, expires="2099-01-01")]) == 0
    assert store.get_entry(entry.id).expires == "2099-01-01T00:00:00Z"
    assert [m.entry_id for m in Matcher(store).match_digests(digests)] == [entry.id]
    store.add_entries("main", [NewEntry(category="2c", digests=digests, expires="2050-01-01")])
    assert store.get_entry(entry.id).expires == "2099-01-01T00:00:00Z", "an earlier expiry does not shorten the listing"
    store.add_entries("main", [NewEntry(category="2c", digests=digests)])
    assert store.get_entry(entry.id).expires is None and store.counts("main")["entries"] == 1
    service = store.add_entry("main", NewEntry(category="nudify-service", url="https://nudify.example/app", expires="2001-01-01"))
    assert service is not None
    store.add_entries("main", [NewEntry(category="nudify-service", url="https://Nudify.example/app", expires="2099-01-01")])
    assert store.get_entry(service.id).expires == "2099-01-01T00:00:00Z", "URL and domain entries too"
    assert [m.entry_id for m in Matcher(store).match_url("https://nudify.example/app/upload")] == [service.id]


def test_counts_come_in_one_order_on_every_backend_and_count_expired_entries(store: Store) -> None:
    store.add_entries("main", [NewEntry(category="2c", digests={"md5": f"{i:032x}"}, kind=kind) for i, kind in enumerate("lora other checkpoint lora".split())])
    store.add_entry("main", NewEntry(category="2b", digests={"sha1": "a" * 40}, expires="2001-01-01"))
    retracted = store.add_entry("main", NewEntry(category="2b", digests={"sha1": "b" * 40}, expires="2001-01-01"))
    assert retracted is not None
    store.set_status(retracted.id, "retracted")
    counts = store.counts("main")
    assert [key for key in counts if key.startswith("kind:")] == ["kind:checkpoint", "kind:lora", "kind:other"]
    assert (counts["kind:other"], counts["entries"], counts["expired"]) == (3, 6, 1)


def test_every_change_is_an_event_and_entries_carry_their_last_seq(store: Store) -> None:
    first = store.add_entry("main", NewEntry(category="2c", digests={"sha256": sha("1")}))
    second = store.add_entry("main", NewEntry(category="2b", digests={"sha256": sha("2")}))
    assert first is not None and second is not None
    retracted = store.set_status(first.id, "retracted", actor="me", reason="false positive")
    actions = [(e.action, e.entry_id) for e in store.events()]
    assert actions == [("create-list", None), ("add", first.id), ("add", second.id), ("retract", first.id)]
    assert retracted.seq == store.last_seq() == 4
    assert [e.id for e in store.entries(changed_since=second.seq)] == [first.id]
    assert [e.id for e in store.entries("main", changed_since=0, until=3)] == [second.id]
    assert [e.seq for e in store.events(since=1, limit=2)] == [2, 3]
    assert store.entries_by_seq([first.seq, retracted.seq]) == [store.get_entry(first.id)]  # an old seq: the entry as it is now
    assert store.entries_by_seq([1, second.seq, 99]) == [store.get_entry(second.id)]  # list events and unknown seqs: nothing


def test_entries_page_through_large_lists(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_store, "_BATCH", 100)
    count = 250  # more than two pages
    store.add_entries("main", (NewEntry(category="2c", digests={"md5": f"{i:032x}"}) for i in range(count)))
    seqs = [e.seq for e in store.entries("main")]
    assert len(seqs) == count and seqs == sorted(seqs)
    assert len(list(store.events(since=0))) == count + 1


def test_find_digests_matches_autov3_on_its_prefix(store: Store) -> None:
    full = store.add_entry("main", NewEntry(category="2c", digests={"autov3": "ab" * 32}))
    short = store.add_entry("main", NewEntry(category="2c", digests={"autov3": "ab" * 6}))
    assert full is not None and short is not None
    assert {e.id for e in store.find_digests({"autov3": "ab" * 6})} == {full.id, short.id}
    assert {e.id for e in store.find_digests({"autov3": "ab" * 32})} == {full.id, short.id}
    assert store.find_digests({"autov3": "cd" * 6}) == []


def test_lists_are_named_once_and_missing_things_are_clear_errors(store: Store) -> None:
    with pytest.raises(InvalidEntryError, match="already exists"):
        store.create_list("main")
    with pytest.raises(InvalidEntryError, match="list names"):
        store.create_list("bad name!")
    with pytest.raises(NotFoundError, match="no list called 'nope'.*main"):
        store.get_list("nope")
    with pytest.raises(NotFoundError, match="no entry"):
        store.get_entry("e000")
    imported = store.create_list("pub/main", publisher="pub", origin_list="main")
    assert store.find_list("pub", "main") == imported and imported.imported
    assert [info.name for info in store.lists()] == ["main", "pub/main"]


def test_opinions_trust_and_sync_positions_persist(store_locations: StoreLocations) -> None:
    location = store_locations.new()
    with open_store(location) as store:
        store.create_list("pub/l", publisher="pub", origin_list="l")
        store.add_entries("pub/l", [NewEntry(category="2c", digests={"md5": "a" * 32})], origin="pub")
        [entry] = store.entries("pub/l")
        opinion = Opinion(entry.id, "dispute", "me", utc_now(), "benign", "pub")
        seq = store.add_opinion(opinion)
        assert store.add_opinion(opinion) == seq, "the same opinion twice is recorded once"
        store.put_trusted_key(TrustedKey("pub", "ed25519:AAAA", "k1", "full", utc_now()))
        store.put_trusted_key(TrustedKey("pub", "ed25519:AAAA", "k1", "review", utc_now()))
        store.set_sync_position("pub", "l", 41)
    with open_store(location) as store:
        assert store.opinions(origin="pub") == [dataclasses.replace(opinion, seq=seq)]
        assert store.opinions(since=seq) == []
        key = store.trusted_key("pub")
        assert key is not None and key.level == "review" and len(store.trusted_keys()) == 1
        assert store.sync_position("pub", "l") == 41 and store.sync_position("pub", "other") == 0


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.add_entries("main", [NewEntry(category="2c", digests={"md5": "b" * 32})])
        store.set_sync_position("p", "s", 9)
        raise RuntimeError("crash")
    assert store.counts()["entries"] == 0 and store.sync_position("p", "s") == 0 and store.last_seq() == 1


def test_the_store_knows_exactly_the_contract_digest_names() -> None:
    assert set(DIGEST_LENGTHS) == set(DIGEST_NAMES)
