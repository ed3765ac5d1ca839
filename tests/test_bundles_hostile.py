"""Hostile bundles: what a partner (or an attacker holding its key) may send.

Bundles here are signed with a key the store trusts, so the signature check passes and what is
tested is everything after it: a trusted publisher's buggy or hostile exporter must get a one-line
refusal (a ModelsieveError) and leave the store as it was, never a traceback.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fpformat import new_fingerprint
from modelsieve.fingerprint.fuzzy import PUBLIC_KEY
from modelsieve.hashlists import bundles
from modelsieve.hashlists.bundles import canonical_json, export_list, export_opinions, import_bundle
from modelsieve.hashlists.curation import confirm, dispute, retract
from modelsieve.hashlists.errors import BundleError, InvalidEntryError
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.signing import KeyFileError, generate_key_files, key_id, load_private_key, sign
from modelsieve.hashlists.sqlite_store import SQLiteStore
from modelsieve.hashlists.store import open_store
from modelsieve.hashlists.trust import trust_publisher
from tests.calibration_fixtures import BASE, tuned
from tests.store_backends import StoreLocations

SHA_A = "a" * 64
NESTED = b"[" * 30_000 + b"]" * 30_000  # far deeper than the JSON parser's recursion limit; a header line fits 64 KiB


class Publisher:
    """A trusted publisher "hotline" whose exporter writes whatever a test asks for, correctly signed."""

    def __init__(self, root: Path) -> None:
        generate_key_files(root / "hotline.key", root / "hotline.pub")
        self.key = load_private_key(root / "hotline.key")
        self.public = (root / "hotline.pub").read_text()
        self.root = root
        self.written = 0

    def bundle(self, records: list[dict[str, Any] | bytes], **manifest: Any) -> Path:
        payload = b"".join((r if isinstance(r, bytes) else canonical_json(r)) + b"\n" for r in records)
        plural = {"entry": "entries", "tombstone": "tombstones", "opinion": "opinions"}
        counts = {"entries": 0, "tombstones": 0, "opinions": 0}
        for record in records:
            if isinstance(record, dict) and isinstance(record.get("type"), str) and record["type"] in plural:
                counts[plural[record["type"]]] += 1
        kind = manifest.get("type", "entries")
        schemes = bundles.SCHEMES[kind] if isinstance(kind, str) and kind in bundles.SCHEMES else {"entry": 1}
        header = {
            "format": "modelsieve-bundle", "version": 1, "type": "entries", "publisher": "hotline",
            "key_id": key_id(self.key.public_key()), "list": "reports", "from_seq": 0, "to_seq": 10,
            "counts": counts, "schemes": schemes, "notes_included": False, "created": "2026-11-23T00:00:00Z",
            "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(), **manifest,
        }
        line = canonical_json(header)
        self.written += 1
        path = self.root / f"bundle-{self.written}.jsonl"
        path.write_bytes(line + b"\n" + canonical_json({"signature": sign(self.key, line)}) + b"\n" + payload)
        return path


def entry_record(seq: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "entry", "entry_id": f"e{seq:024x}", "seq": seq, "category": "2c", "kind": "lora",
        "digests": {"sha256": f"{seq:064x}"}, "fingerprint": None, "url": None, "domain": None, "source": "reporter",
        "evidence": "exact-file", "first_seen": None, "added": "2026-11-23T00:00:00Z", "status": "active",
        "expires": None, **fields,
    }


def state(store: SQLiteStore) -> tuple:
    return (store.last_seq(), [e.to_json(include_note=True) for e in store.entries()], store.lists(),
            store.sync_position("hotline", "reports"))


@pytest.fixture
def publisher(tmp_path: Path) -> Publisher:
    return Publisher(tmp_path)


@pytest.fixture
def importer(tmp_path: Path, publisher: Publisher) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "importer.db")
    trust_publisher(store, "hotline", publisher.public, "full")
    yield store
    store.close()


def refused_without_change(store: SQLiteStore, path: Path, message: str) -> None:
    before = state(store)
    with pytest.raises(BundleError, match=message):
        import_bundle(store, path)
    assert state(store) == before


# -- bundles ------------------------------------------------------------------------------------
def test_deeply_nested_json_in_any_bundle_line_is_refused_not_a_crash(importer: SQLiteStore, publisher: Publisher, tmp_path: Path) -> None:
    """json.loads raises RecursionError (not ValueError) past ~1,000 levels: unsigned files once
    crashed `list import` in is_bundle and read_manifest with a traceback."""
    unsigned = tmp_path / "nested-manifest.jsonl"
    unsigned.write_bytes(NESTED + b"\n")
    assert not bundles.is_bundle(unsigned)
    refused_without_change(importer, unsigned, "not a modelsieve bundle")
    signature = publisher.bundle([entry_record(1)]).read_bytes().split(b"\n")
    nested_signature = tmp_path / "nested-signature.jsonl"
    nested_signature.write_bytes(signature[0] + b"\n" + NESTED + b"\n" + b"\n".join(signature[2:]))
    refused_without_change(importer, nested_signature, "unsigned bundle")
    refused_without_change(importer, publisher.bundle([entry_record(1), NESTED]), "not valid JSON")


def test_sequence_numbers_beyond_64_bits_or_booleans_are_refused(importer: SQLiteStore, publisher: Publisher) -> None:
    """A signed manifest's to_seq of 2**63 once reached SQLite and failed with OverflowError."""
    for manifest in ({"to_seq": 1 << 63}, {"to_seq": 10**30}, {"from_seq": False, "to_seq": True}, {"payload_bytes": True}):
        refused_without_change(importer, publisher.bundle([entry_record(1)], **manifest), "integers from 0 to 2\\*\\*63 - 1")
    refused_without_change(importer, publisher.bundle([{**entry_record(1), "seq": True}]), "outside the manifest's range")


def test_an_expiry_outside_the_calendar_is_refused_not_a_crash(importer: SQLiteStore, publisher: Publisher) -> None:
    for expires in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"):
        refused_without_change(importer, publisher.bundle([entry_record(1, expires=expires)]), "years 1-9999")


def test_an_entry_with_a_large_models_raw_fingerprint_round_trips(tmp_path: Path, publisher: Publisher, importer: SQLiteStore) -> None:
    """An SDXL-sized checkpoint (2,500 sketched tensors) listed without a registered base keeps a raw
    fingerprint of ~1.5 MB, ~2 MB as base64: export wrote it, import refused its record line as
    longer than 1 MiB."""
    rng = np.random.default_rng(7)
    names = [f"model.diffusion_model.block_{i}.attn.to_q.weight" for i in range(2_500)]
    fingerprint = new_fingerprint("checkpoint", None, PUBLIC_KEY, {n: rng.standard_normal((12, 12)) for n in names},
                                  {n: (640, 640) for n in names}, {n: 0.0 for n in names})
    blob = fingerprint.to_bytes()
    assert len(blob) * 4 // 3 > 1 << 20
    with SQLiteStore(tmp_path / "publisher.db") as store:
        store.create_list("reports", publisher="hotline")
        store.add_entry("reports", NewEntry(category="2c", kind="checkpoint", fingerprint=blob, evidence="fuzzy"))
        export_list(store, "reports", publisher.key, tmp_path / "large.jsonl")
    report = import_bundle(importer, tmp_path / "large.jsonl")
    assert report.entries == 1
    [entry] = importer.entries()
    assert entry.fingerprint == blob and entry.origin == "hotline"


def test_a_record_no_importer_would_read_is_refused_at_export(tmp_path: Path, publisher: Publisher, monkeypatch: pytest.MonkeyPatch) -> None:
    with SQLiteStore(tmp_path / "publisher.db") as store:
        store.create_list("reports", publisher="hotline")
        store.add_entry("reports", NewEntry(category="2c", digests={"sha256": SHA_A}, note="n" * 400))
        monkeypatch.setattr(bundles, "MAX_RECORD_LINE", 300)
        with pytest.raises(InvalidEntryError, match="over 300 bytes: not exportable"):
            export_list(store, "reports", publisher.key, tmp_path / "out.jsonl", include_notes=True)
    assert not (tmp_path / "out.jsonl").exists()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
MANIFEST_FIELDS = ("type", "list", "from_seq", "to_seq", "counts", "payload_bytes", "publisher", "key_id", "created")
RECORD_FIELDS = ("type", "entry_id", "seq", "category", "kind", "digests", "fingerprint", "url", "domain", "source",
                 "evidence", "first_seen", "added", "status", "expires", "note", "opinion", "at", "reason")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    manifest=st.dictionaries(st.sampled_from(MANIFEST_FIELDS), JSON_VALUES, max_size=2),
    records=st.lists(
        st.builds(lambda seq, changes: {**entry_record(seq), **changes}, st.integers(1, 12),
                  st.dictionaries(st.sampled_from(RECORD_FIELDS), JSON_VALUES | st.sampled_from(
                      ["tombstone", "opinion", "retracted", "disputed", "0001-01-01T00:00:00+01:00", SHA_A, "ed25519:x"]),
                      max_size=3)),
        max_size=4,
    ),
)
def test_any_signed_bundle_from_a_trusted_publisher_applies_or_is_refused_cleanly(
    importer: SQLiteStore, publisher: Publisher, manifest: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    before = state(importer)
    try:
        report = import_bundle(importer, publisher.bundle(records, **manifest))
    except ModelsieveError as exc:
        assert "\n" not in str(exc)
        assert state(importer) == before
        return
    assert report.publisher == "hotline"
    importer.set_sync_position("hotline", str(report.list), 0)  # the next example may reuse the range




@pytest.mark.parametrize("name", ["Example Trust & Safety", "a/b", "", "-x", "x" * 65, "a\nb"])
def test_a_publisher_name_no_importer_could_file_is_refused_up_front(tmp_path: Path, publisher: Publisher, name: str) -> None:
    """An importer files a publisher's list as PUBLISHER/LIST. A list created with publisher
    "Example Trust & Safety" exported fine and its partners could trust that name, but every
    import then failed on the list name; now the name is refused where it is first given."""
    with SQLiteStore(tmp_path / "s.db") as store:
        with pytest.raises(InvalidEntryError, match="publisher names are"):
            store.create_list("reports", publisher=name)
        with pytest.raises(InvalidEntryError, match="publisher names are"):
            trust_publisher(store, name, publisher.public, "full")
        with pytest.raises(InvalidEntryError, match="publisher names are"):
            export_opinions(store, "hotline", publisher.key, tmp_path / "opinions.jsonl", as_name=name)
        assert store.lists() == [] and store.trusted_keys() == []
    assert not (tmp_path / "opinions.jsonl").exists()


def test_text_with_nul_and_odd_entry_ids_are_refused_on_every_backend(store_locations: StoreLocations) -> None:
    """PostgreSQL text cannot hold NUL: a note, source or retraction reason with one failed there
    with psycopg's DataError (a traceback; a 500 over HTTP) while SQLite kept it."""
    with open_store(store_locations.new()) as store:
        store.create_list("reports", publisher="acme")
        for fields, message in (({"note": "a\x00b"}, "note contains a NUL"), ({"source": "\x00"}, "source contains a NUL"),
                                ({"id": "a\nb"}, "an entry id is"), ({"id": "x" * 65}, "an entry id is")):
            with pytest.raises(InvalidEntryError, match=message):
                store.add_entry("reports", NewEntry(category="2c", digests={"sha256": SHA_A}, **fields))
        entry = store.add_entry("reports", NewEntry(category="2c", digests={"sha256": SHA_A}))
        assert entry is not None
        for judge in (retract, dispute, confirm):
            with pytest.raises(InvalidEntryError, match="reason contains a NUL"):
                judge(store, entry.id, reason="\x00")
        assert store.get_entry(entry.id).status == "active" and [e.id for e in store.entries()] == [entry.id]


def test_bundle_ids_reasons_and_times_are_checked_like_local_input(importer: SQLiteStore, publisher: Publisher) -> None:
    """Entry ids with any character but the API's [A-Za-z0-9._-] could be imported (and then never
    retracted or disputed over HTTP); an opinion's reason and time were stored unchecked."""
    refused_without_change(importer, publisher.bundle([entry_record(1, entry_id="a\nb")]), "no valid entry_id")
    refused_without_change(importer, publisher.bundle([{"type": "tombstone", "entry_id": "a b", "seq": 1}]), "no valid entry_id")
    refused_without_change(importer, publisher.bundle([entry_record(1, note="\x00")]), "note contains a NUL")
    # hypothesis found it: a note that is no text reached SQLite ("type 'list' is not supported")
    refused_without_change(importer, publisher.bundle([entry_record(1, note=[1])]), "note must be text, got list")
    opinion = {"type": "opinion", "entry_id": "e" + "0" * 24, "opinion": "dispute", "at": "2026-11-23T00:00:00Z", "reason": "", "seq": 1}
    for change, message in (({"reason": "\x00"}, "reason contains a NUL"), ({"at": "yesterday"}, "ISO 8601"), ({"reason": 5}, "no text")):
        path = publisher.bundle([{**opinion, **change}], type="opinions", list=None)
        before = importer.opinions()
        with pytest.raises(BundleError, match=message):
            import_bundle(importer, path)
        assert importer.opinions() == before and importer.sync_position("hotline", "opinions") == 0


def test_records_about_one_entry_apply_in_their_order(importer: SQLiteStore, publisher: Publisher) -> None:
    """A batch applied its tombstones before its entries: an entry and then its tombstone in one
    bundle left the entry active (and matching), whatever the order said."""
    first, second = entry_record(1), entry_record(2)
    tombstone = {"type": "tombstone", "entry_id": first["entry_id"], "seq": 3}
    again = {**second, "seq": 4, "category": "2b"}
    import_bundle(importer, publisher.bundle([first, second, tombstone, again]))
    statuses = {e.id: (e.status, e.category) for e in importer.entries()}
    assert statuses == {first["entry_id"]: ("retracted", "2c"), second["entry_id"]: ("active", "2b")}
    assert Matcher(importer).match_digests({"sha256": first["digests"]["sha256"]}) == []


@pytest.mark.parametrize("since", [-5, 1000])
def test_export_refuses_a_since_no_importer_could_apply(tmp_path: Path, publisher: Publisher, since: int) -> None:
    """`list export --since 1000` on a store at seq 2 wrote "seq 1000..2" (and --since -5 "seq -5..2")
    with exit status 0; every importer refused the bundle."""
    with SQLiteStore(tmp_path / "publisher.db") as store:
        store.create_list("reports", publisher="hotline")
        store.add_entry("reports", NewEntry(category="2c", digests={"sha256": SHA_A}))
        for export in (lambda out: export_list(store, "reports", publisher.key, out, since=since),
                       lambda out: export_opinions(store, "partner", publisher.key, out, as_name="hotline", since=since)):
            with pytest.raises(InvalidEntryError, match=f"since {since} is outside this store's sequence numbers \\(0 to 2\\)"):
                export(tmp_path / "out.jsonl")
            assert not (tmp_path / "out.jsonl").exists()


def test_a_local_list_cannot_take_the_name_an_import_files_a_partners_list_under(importer: SQLiteStore, publisher: Publisher) -> None:
    """`list create hotline/reports` was accepted (the help says names have no '/'), and from then
    on every bundle of hotline's list "reports" was refused: "a list called 'hotline/reports'
    already exists"."""
    with pytest.raises(InvalidEntryError, match="'/' is kept for imported lists"):
        importer.create_list("hotline/reports")
    assert import_bundle(importer, publisher.bundle([entry_record(1)])).entries == 1
    assert [(info.name, info.origin_list) for info in importer.lists()] == [("hotline/reports", "reports")]


def test_records_of_a_scheme_this_version_does_not_read_are_refused(importer: SQLiteStore, publisher: Publisher) -> None:
    """The manifest names its records' scheme versions so that an older importer can refuse what it
    cannot read; the import ignored them and applied {"entry": 2} records as version 1."""
    for schemes in ({"entry": 3}, {}, {"entry": 1, "fingerprint": 9}, "entry"):
        refused_without_change(importer, publisher.bundle([entry_record(1)], schemes=schemes), "this modelsieve reads")
    assert import_bundle(importer, publisher.bundle([entry_record(1)], schemes={"entry": 1})).entries == 1
    assert import_bundle(importer, publisher.bundle([entry_record(12)], schemes={"entry": 2}, from_seq=10, to_seq=20)).entries == 1


def test_own_entries_cannot_go_into_a_partners_imported_list(importer: SQLiteStore, publisher: Publisher) -> None:
    """`list add hotline/reports --sha256 ...` was accepted, and the new entry's source became the
    list's publisher: matches named hotline as the source of an entry hotline never listed."""
    import_bundle(importer, publisher.bundle([entry_record(1)]))
    with pytest.raises(InvalidEntryError, match="is hotline's, imported: only their bundles add to it"):
        importer.add_entry("hotline/reports", NewEntry(category="2c", digests={"sha256": SHA_A}))
    assert Matcher(importer).match_digests({"sha256": SHA_A}) == []
    assert [e.origin for e in importer.entries()] == ["hotline"]


def test_a_cohort_members_source_with_nul_is_refused(importer: SQLiteStore, publisher: Publisher) -> None:
    """Background bundles too: a source with NUL reached PostgreSQL text (DataError)."""
    member = {"type": "background", "base": BASE, "source": "tune\x00", "fingerprint": base64.b64encode(tuned(1).to_bytes()).decode()}
    path = publisher.bundle([member], type="background", list=None, to_seq=0, counts={"background": 1})
    with pytest.raises(BundleError, match="source contains a NUL"):
        import_bundle(importer, path)
    assert importer.list_background() == []


@pytest.mark.parametrize("key", ["0123456789abcdef\nmodelsieve: imported 1000 entries", "k" * 60_000, 5])
def test_an_unsigned_manifest_cannot_put_its_own_text_into_the_refusal(importer: SQLiteStore, publisher: Publisher, tmp_path: Path, key: Any) -> None:
    """The key-mismatch refusal quoted the manifest's key_id as it stood, before any signature was
    checked: anyone could make `list import` print lines of their choosing (or 60 KB)."""
    path = tmp_path / "forged.jsonl"
    path.write_bytes(publisher.bundle([entry_record(1)], key_id=key).read_bytes())
    with pytest.raises(BundleError) as refused:
        import_bundle(importer, path)
    assert str(refused.value) == "bundle manifest: key_id is not a key id (16 hex characters)"


def test_an_unsigned_manifests_publisher_and_version_are_quoted_only_when_short(importer: SQLiteStore, publisher: Publisher) -> None:
    """Refusals quoted the manifest's publisher and version whole (before any signature check)."""
    for manifest, message in (({"publisher": "p" * 60_000}, "publisher names are"), ({"publisher": "a\nb"}, "publisher names are"),
                              ({"version": "v" * 60_000}, "bundle version 'vvvvvvvvvvvvvvvvvvvv' is not supported")):
        path = publisher.bundle([entry_record(1)], **manifest)
        with pytest.raises(BundleError, match=message) as refused:
            import_bundle(importer, path)
        assert len(str(refused.value)) < 200 and "\n" not in str(refused.value)


def test_export_to_a_path_that_cannot_be_written_is_one_line(tmp_path: Path, publisher: Publisher) -> None:
    """`list export -o FOLDER` ended in IsADirectoryError from os.replace: a traceback."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    with SQLiteStore(tmp_path / "publisher.db") as store:
        store.create_list("reports", publisher="hotline")
        for out in (tmp_path / "folder", tmp_path / "file" / "x.jsonl"):
            with pytest.raises(BundleError, match=f"^cannot write the bundle to {out}: [A-Z][a-z ]+$"):
                export_list(store, "reports", publisher.key, out)
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == [], "no temporary file is left behind"


@pytest.mark.parametrize("name", ["l" * 60_000, "a/b", "a\nb", 5])
def test_a_manifest_list_that_is_no_list_name_is_refused_first(importer: SQLiteStore, publisher: Publisher, name: Any) -> None:
    """It was quoted whole in refusals (the HTTP import's "the bundle is for list ...", 60 KB)."""
    refused_without_change(importer, publisher.bundle([entry_record(1)], list=name), "list is not a list name")


def test_one_key_cannot_be_trusted_as_two_publishers(importer: SQLiteStore, publisher: Publisher) -> None:
    """`trust add partner hotline.pub` (a copied file name) was accepted: hotline could then sign
    bundles as "partner", filed as partner's list, with partner as origin and source."""
    with pytest.raises(InvalidEntryError, match="is trusted as 'hotline' already: one key speaks for one publisher"):
        trust_publisher(importer, "partner", publisher.public, "full")
    trust_publisher(importer, "hotline", publisher.public, "review")  # the same name may change its level
    assert [(k.name, k.level) for k in importer.trusted_keys()] == [("hotline", "review")]
    refused_without_change(importer, publisher.bundle([entry_record(1)], publisher="partner"), "unknown publisher 'partner'")


def test_another_key_for_a_trusted_publisher_needs_replace_and_then_the_old_key_is_refused(
    importer: SQLiteStore, publisher: Publisher, tmp_path: Path
) -> None:
    """The check lives in `trust_publisher`, so every caller (not only `trust add`) has it: a
    second call with another key used to swap the key bundles are verified with, unasked."""
    generate_key_files(tmp_path / "rotated.key", tmp_path / "rotated.pub")
    rotated = (tmp_path / "rotated.pub").read_text()
    with pytest.raises(InvalidEntryError, match="hotline is trusted with key .*: add --replace"):
        trust_publisher(importer, "hotline", rotated, "full")
    assert [k.public_key for k in importer.trusted_keys()] == [publisher.public.strip()]
    trust_publisher(importer, "hotline", rotated, "full", replace=True)
    refused_without_change(importer, publisher.bundle([entry_record(1)]), "signed with key")


def test_a_key_pair_is_made_whole_or_not_at_all(tmp_path: Path) -> None:
    """A public key file that could not be written was a traceback (FileNotFoundError) that left
    the new private key behind without its public half."""
    with pytest.raises(KeyFileError, match="cannot create .*missing/acme.pub: No such file or directory"):
        generate_key_files(tmp_path / "acme.key", tmp_path / "missing" / "acme.pub")
    assert not (tmp_path / "acme.key").exists()
