"""Exact, URL and domain matching through the in-memory indexes, refreshed from the event log."""

from __future__ import annotations

import hashlib

from pathlib import Path

import pytest

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.digests import hash_file
from modelsieve.hashlists.curation import confirm, dispute, retract
from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import DIGEST_LENGTHS, MatchResult, NewEntry, TrustedKey, utc_now
from modelsieve.hashlists.sqlite_store import SQLiteStore


def value_for(name: str, seed: str) -> str:
    return hashlib.sha256(f"{name}:{seed}".encode()).hexdigest()[: DIGEST_LENGTHS[name][0]]


@pytest.mark.parametrize("name", list(DIGEST_LENGTHS))
def test_every_digest_kind_matches_case_insensitively(store: SQLiteStore, name: str) -> None:
    listed = store.add_entry("main", NewEntry(category="2c", kind="lora", digests={name: value_for(name, "listed")}))
    store.add_entry("main", NewEntry(category="2c", digests={name: value_for(name, "other")}))
    assert listed is not None
    matcher = Matcher(store)
    [match] = matcher.match_digests({name: value_for(name, "listed").upper()})
    assert (match.entry_id, match.kind, match.list, match.category, match.source) == (listed.id, name, "main", "2c", "platform-a")
    assert match.status == "active" and match.score == 1.0 and match.trust == "local"
    assert matcher.match_digests({name: value_for(name, "absent")}) == []


def test_autov3_matches_between_full_values_and_civitai_prefixes(store: SQLiteStore) -> None:
    full = "0123456789ab" + "c" * 52
    listed_full = store.add_entry("main", NewEntry(category="2c", digests={"autov3": full}))
    listed_prefix = store.add_entry("main", NewEntry(category="2c", digests={"autov3": "FEDCBA987654"}))
    assert listed_full is not None and listed_prefix is not None
    matcher = Matcher(store)
    assert [(m.entry_id, m.bits) for m in matcher.match_digests({"autov3": full[:12]})] == [(listed_full.id, 48)]
    assert [(m.entry_id, m.bits) for m in matcher.match_digests({"autov3": full})] == [(listed_full.id, 256)]
    assert [m.entry_id for m in matcher.match_digests({"autov3": "fedcba987654" + "0" * 52})] == [listed_prefix.id]
    assert matcher.match_digests({"autov3": full[:12] + "d" * 52}) == [], "same prefix, different full value"


def test_a_short_digest_agreeing_while_a_strong_one_differs_is_no_match(store: SQLiteStore) -> None:
    store.add_entry("main", NewEntry(category="2c", digests={"sha256": value_for("sha256", "a"), "crc32": "0d4a1185"}))
    matcher = Matcher(store)
    assert matcher.match_digests({"sha256": value_for("sha256", "b"), "crc32": "0D4A1185"}) == []
    [weak] = matcher.match_digests({"crc32": "0d4a1185"})
    assert (weak.kind, weak.bits) == ("crc32", 32)
    [strong] = matcher.match_digests({"sha256": value_for("sha256", "a"), "crc32": "0d4a1185"})
    assert (strong.kind, strong.bits, strong.digests) == ("sha256", 256, ("sha256", "crc32"))


def test_a_strong_digest_that_agrees_matches_whatever_weaker_listed_value_differs(store: SQLiteStore) -> None:
    """A list whose CRC32 column was written in the other byte order (or any wrong short value)
    made every exact SHA-256 copy "none": one differing digest vetoed the match."""
    sha256, crc32 = value_for("sha256", "listed"), "0D4A1185"
    entry = store.add_entry("main", NewEntry(category="2c", digests={"sha256": sha256, "crc32": "85114A0D", "autov1": "0" * 8}))
    assert entry is not None
    [match] = Matcher(store).match_digests({"sha256": sha256, "crc32": crc32, "autov1": "1" * 8})
    assert (match.entry_id, match.kind, match.bits, match.digests, match.differing) == (entry.id, "sha256", 256, ("sha256",), ("crc32", "autov1"))
    assert match.identifies and match.to_json()["differing"] == ["crc32", "autov1"]
    # a weak agreement against a differing digest stays a collision, strong or weak
    assert Matcher(store).match_digests({"sha256": value_for("sha256", "other"), "crc32": "85114A0D"}) == []
    assert Matcher(store).match_digests({"crc32": "85114A0D", "autov1": "1" * 8}) == []


def test_autov1_alone_is_equal_across_sibling_fine_tunes_so_it_is_near_not_exact(store: SQLiteStore, tmp_path: Path) -> None:
    """AutoV1 hashes 64 KB at offset 1 MiB: two independent fine-tunes of one base that leave the
    text encoder alone share it. A list of AutoV1 values (what old images' metadata name) called
    the other fine-tune an "exact" match of a 2c entry; too few bits alone say "near", for review."""
    family = syn.Family(3, syn.Architecture(scale=20, text_layers=2, vocab=300))
    listed, sibling = tmp_path / "listed.safetensors", tmp_path / "sibling.safetensors"
    syn.write_safetensors(listed, family.checkpoint(family.fine_tune(1, text_encoder=False)))
    syn.write_safetensors(sibling, family.checkpoint(family.fine_tune(2, text_encoder=False)))
    autov1 = hash_file(listed).digests["autov1"]
    assert hash_file(sibling).digests["autov1"] == autov1 and hash_file(sibling).digests["sha256"] != hash_file(listed).digests["sha256"]
    store.add_entry("main", NewEntry(category="2c", digests={"autov1": autov1}))
    matcher = Matcher(store, refresh_interval=0)
    result = matcher.match_path(sibling)
    assert result.verdict == "near" and [(m.kind, m.bits, m.identifies) for m in result.matches] == [("autov1", 32, False)]
    sibling_digests = hash_file(sibling).digests
    store.add_entry("main", NewEntry(category="2c", digests={"autov2": sibling_digests["autov2"]}))
    assert matcher.match_path(sibling).verdict == "near", "AutoV2's 40 bits collide by chance at a search engine's scale"
    store.add_entry("main", NewEntry(category="2c", digests={"blake3": sibling_digests["blake3"]}))
    assert matcher.match_path(sibling).verdict == "exact"


def test_retracted_never_matches_disputed_matches_flagged_expired_never(store: SQLiteStore) -> None:
    digest = {"md5": value_for("md5", "x")}
    entry = store.add_entry("main", NewEntry(category="2c", digests=digest))
    assert entry is not None
    matcher = Matcher(store, refresh_interval=0)
    dispute(store, entry.id, reason="looks benign")
    assert [m.status for m in matcher.match_digests(digest)] == ["disputed"]
    confirm(store, entry.id)
    assert [m.status for m in matcher.match_digests(digest)] == ["active"]
    retract(store, entry.id, reason="false positive")
    assert matcher.match_digests(digest) == []
    expired = store.add_entry("main", NewEntry(category="2c", digests={"sha1": "1" * 40}, expires="2001-01-01"))
    assert expired is not None and matcher.match_digests({"sha1": "1" * 40}) == []


def test_the_matcher_sees_changes_made_after_it_was_built(store: SQLiteStore) -> None:
    matcher = Matcher(store, refresh_interval=0)
    assert matcher.match_digests({"sha1": "2" * 40}) == []
    store.add_entries("main", (NewEntry(category="2c", digests={"sha1": f"{i:040x}"}) for i in range(300)))
    store.add_entry("main", NewEntry(category="2a", digests={"sha1": "2" * 40}))
    assert [m.category for m in matcher.match_digests({"sha1": "2" * 40})] == ["2a"]
    assert matcher.seq == store.last_seq()


def test_a_stale_matcher_never_reports_a_retracted_entry(store: SQLiteStore) -> None:
    entry = store.add_entry("main", NewEntry(category="2c", digests={"md5": "c" * 32}))
    assert entry is not None
    matcher = Matcher(store, refresh_interval=3600)
    retract(store, entry.id)
    assert matcher.match_digests({"md5": "c" * 32}) == [], "hits are confirmed against the store"


def test_imported_entries_carry_their_publisher_and_trust(store: SQLiteStore) -> None:
    store.create_list("pub/l", publisher="pub", origin_list="l")
    store.add_entries("pub/l", [NewEntry(category="2c", digests={"md5": "d" * 32}, source="hotline")], origin="pub")
    store.put_trusted_key(TrustedKey("pub", "ed25519:AA", "k", "review", utc_now()))
    matcher = Matcher(store, refresh_interval=0)
    [match] = matcher.match_digests({"md5": "D" * 32})
    assert (match.origin, match.trust, match.source, match.list) == ("pub", "review", "hotline", "pub/l")
    store.put_trusted_key(TrustedKey("pub", "ed25519:AA", "k", "none", utc_now()))
    assert matcher.match_digests({"md5": "d" * 32}) == []


def test_urls_match_themselves_and_pages_below_domains_match_subdomains(store: SQLiteStore) -> None:
    url_entry = store.add_entry("main", NewEntry(category="nudify-service", url="https://Undress.example.com/app"))
    domain_entry = store.add_entry("main", NewEntry(category="nudify-service", domain="https://www.nudify.co.uk/"))
    assert url_entry is not None and domain_entry is not None
    assert domain_entry.domain == "nudify.co.uk"
    matcher = Matcher(store)
    for url in ("http://undress.example.com/app", "https://UNDRESS.example.com:443/app/upload?x=1#f", "undress.example.com/app/"):
        assert [(m.entry_id, m.kind) for m in matcher.match_url(url)] == [(url_entry.id, "url")], url
    assert matcher.match_url("https://undress.example.com/application") == []
    assert matcher.match_url("https://other.example.com/app") == []
    assert [(m.entry_id, m.kind) for m in matcher.match_url("https://cdn.img.nudify.co.uk/a.png")] == [(domain_entry.id, "domain")]
    assert matcher.match_url("https://nudify.co.uk.evil.example/") == []
    assert [m.kind for m in matcher.match_url("https://nud\u00adify.co.uk/")] == ["domain"]  # as a browser reads it
    with pytest.raises(InvalidEntryError):
        matcher.match_url("ftp://undress.example.com/app")


def test_a_url_listed_with_a_trailing_slash_covers_the_same_path_without_it(store: SQLiteStore) -> None:
    """`/app` and `/app/` are one page (or a redirect to it) on every server a delisting job meets."""
    entry = store.add_entry("main", NewEntry(category="nudify-service", url="https://undress.example.com/app/"))
    assert entry is not None
    matcher = Matcher(store)
    for url in ("https://undress.example.com/app", "https://undress.example.com/app?ref=1", "https://undress.example.com/app/x"):
        assert [m.entry_id for m in matcher.match_url(url)] == [entry.id], url
    assert matcher.match_url("https://undress.example.com/ap") == []
    assert matcher.match_url("https://undress.example.com/apps") == []


def test_match_result_json_has_the_contract_shape(store: SQLiteStore) -> None:
    store.add_entry("main", NewEntry(category="nudify-service", url="https://n.example.org/"))
    result = Matcher(store).match_url_result("https://n.example.org/page")
    record = result.to_json()
    assert record["path"] == "https://n.example.org/page" and record["verdict"] == "exact"
    [match] = record["matches"]
    assert {"entry_id", "list", "category", "source", "kind", "score", "coefficient", "base", "status"} <= set(match)
    assert MatchResult("x").to_json() == {"path": "x", "verdict": "none", "matches": []}
