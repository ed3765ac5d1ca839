"""Signed bundles: how platforms exchange list changes (entries, tombstones) and opinions.

A bundle is one UTF-8 JSON Lines file, streamable and canonical for signing:

    line 1   manifest   {"format": "modelsieve-bundle", "version": 1, "type": "entries"|"opinions"|"background",
                         "publisher", "key_id", "list", "from_seq", "to_seq", "counts",
                         "schemes", "notes_included", "created", "payload_bytes", "payload_sha256"}
    line 2   signature  {"signature": base64 Ed25519 over the exact bytes of line 1 (no newline)}
    line 3…  payload    one record a line: {"type": "entry", ...}, {"type": "tombstone", ...}
                         or {"type": "opinion", ...} or {"type": "background", ...}

Every line is compact JSON with sorted keys. The manifest fixes the SHA-256 and length of the
payload bytes (lines 3 to the end, newlines included), so the signature covers every byte: a
reader verifies the manifest before reading on, hashes the payload while applying it inside one
transaction, and rolls back if the hash, length or counts disagree. Sequence numbers are the
publisher's: a bundle holds the changes in (from_seq, to_seq]; an importer applies a publisher's
stream (one list, or its opinions) in order, refusing replays (to_seq already applied) and gaps
(from_seq beyond what it has).

A ``background`` bundle carries one base's calibration cohort (fingerprints of known-benign
derived models, see fingerprint/calibration.py) from a publisher the importer trusts. Cohort
members are keyed by their fingerprint's SHA-256, so applying one is idempotent and it has no
sequence stream (from_seq = to_seq = 0): a re-import adds only members the store lacks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeGuard

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fpformat import Fingerprint
from modelsieve.hashlists.atomic import atomic_write
from modelsieve.hashlists.errors import BundleError, InvalidEntryError
from modelsieve.hashlists.model import (
    OPINIONS,
    Entry,
    NewEntry,
    Opinion,
    check_choice,
    check_list_name,
    check_publisher_name,
    check_text,
    is_entry_id,
    normalise_timestamp,
    utc_now,
)
from modelsieve.hashlists.signing import key_id, parse_public_key, sign, verify
from modelsieve.hashlists.store import Store
from modelsieve.hashlists.trust import accepted_key
from modelsieve.hashlists.urls import registrable_domain

FORMAT = "modelsieve-bundle"
VERSION = 1
OPINIONS_STREAM = "opinions"
MAX_HEADER_LINE = 64 * 1024
MAX_RECORD_LINE = 32 << 20  # an entry with a large model's raw fingerprint (SDXL: ~2 MB of base64) fits
PAUSE_ENV = "MODELSIEVE_TEST_IMPORT_PAUSE"  # tests only: pause inside the import transaction
_APPLY_BATCH = 2_000
_BACKGROUND_BATCH = 64  # cohort fingerprints held in memory at once while importing
BUNDLE_TYPES = ("entries", "opinions", "background")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
SCHEMES = {"entries": {"entry": 1}, "opinions": {"opinion": 1}, "background": {"background": 1}}  # record formats, by bundle type
# Entry scheme 2: a domain may name a host below its registrable domain (`sites.google.com`, that
# host and those below it). Scheme-1 importers widened such a domain to the registrable one (all
# of google.com), so a bundle holding one says 2 and they refuse it; every other bundle says 1.
HOST_DOMAINS_SCHEME = {"entry": 2}
READABLE_SCHEMES = {**{kind: (schemes,) for kind, schemes in SCHEMES.items()}, "entries": (SCHEMES["entries"], HOST_DOMAINS_SCHEME)}


def canonical_json(record: dict[str, Any]) -> bytes:
    """The exact bytes a record is hashed and signed as: sorted keys, no spaces, ASCII only."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _json(line: bytes) -> Any:
    """`json.loads`, with nesting too deep for the parser reported as the ValueError it is
    (a hostile line of 64 KiB of `[` would otherwise escape as a RecursionError)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_own_list_name(value: Any) -> bool:
    """Whether `value` names a list of the publisher's own (a list name without '/')."""
    try:
        return isinstance(value, str) and "/" not in value and bool(check_list_name(value))
    except InvalidEntryError:
        return False


def _is_int64(value: Any) -> TypeGuard[int]:
    """An integer a store's signed 64-bit column holds (not a bool, which JSON's true would give)."""
    return isinstance(value, int) and not isinstance(value, bool) and -(1 << 63) <= value < 1 << 63


@dataclass(frozen=True)
class Manifest:
    """A bundle's first line: its type, publisher, signing key, list and seq range (README, Bundles)."""

    type: str
    publisher: str
    key_id: str
    list: str | None
    from_seq: int
    to_seq: int
    counts: dict[str, int]
    notes_included: bool
    created: str
    payload_bytes: int
    payload_sha256: str
    schemes: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.__dict__}

    @classmethod
    def from_line(cls, line: bytes) -> Manifest:
        """The manifest in a bundle's first line; BundleError for anything that is not a valid one."""
        try:
            record = _json(line)
            if record.get("format") != FORMAT:
                raise BundleError("not a modelsieve bundle (its first line is no bundle manifest)")
            if record.get("version") != VERSION:
                raise BundleError(f"bundle version {str(record.get('version'))[:20]!r} is not supported (this modelsieve reads {VERSION})")
            del record["format"], record["version"]
            manifest = cls(**record)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise BundleError("not a modelsieve bundle (its first line is no bundle manifest)") from None
        if manifest.type not in BUNDLE_TYPES or not isinstance(manifest.publisher, str):
            raise BundleError("bundle manifest: unknown type or publisher")
        try:
            check_publisher_name(manifest.publisher)  # no other name can be trusted; refusals quote it
        except InvalidEntryError as exc:
            raise BundleError(f"bundle manifest: {exc}") from None
        if manifest.list is not None and not _is_own_list_name(manifest.list):  # filed as PUBLISHER/LIST
            raise BundleError("bundle manifest: list is not a list name (1-64 letters, digits, '.', '_' or '-')")
        if not (isinstance(manifest.key_id, str) and _KEY_ID.fullmatch(manifest.key_id)):  # it is quoted in refusals
            raise BundleError("bundle manifest: key_id is not a key id (16 hex characters)")
        if not all(_is_int64(v) and v >= 0 for v in (manifest.from_seq, manifest.to_seq, manifest.payload_bytes)):
            raise BundleError("bundle manifest: sequence numbers and sizes must be integers from 0 to 2**63 - 1")
        if manifest.to_seq < manifest.from_seq:
            raise BundleError("bundle manifest: to_seq before from_seq")
        if manifest.schemes not in READABLE_SCHEMES[manifest.type]:  # records of another format would be misread
            readable = " or ".join(map(str, READABLE_SCHEMES[manifest.type]))
            raise BundleError(
                f"bundle records of scheme {str(manifest.schemes)[:80]}: this modelsieve reads {readable} in {manifest.type} bundles"
            )
        return manifest


@dataclass(frozen=True)
class ImportReport:
    """What one bundle import did."""

    publisher: str
    type: str
    list: str | None
    from_seq: int
    to_seq: int
    entries: int
    tombstones: int
    opinions: int
    background: int = 0  # cohort members the bundle carried (those already held are skipped)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- export ------------------------------------------------------------------------------------
def _empty_counts(bundle_type: str) -> dict[str, int]:
    if bundle_type == "background":
        return {"background": 0}
    return {"entries": 0, "tombstones": 0, "opinions": 0}


def _entry_record(entry: Entry, include_notes: bool) -> dict[str, Any]:
    if entry.status == "retracted":
        return {"type": "tombstone", "entry_id": entry.id, "seq": entry.seq}
    record: dict[str, Any] = {
        "type": "entry",
        "entry_id": entry.id,
        "seq": entry.seq,
        "category": entry.category,
        "kind": entry.kind,
        "digests": dict(entry.digests),
        "fingerprint": base64.b64encode(entry.fingerprint).decode() if entry.fingerprint else None,
        "url": entry.url,
        "domain": entry.domain,
        "source": entry.source,
        "evidence": entry.evidence,
        "first_seen": entry.first_seen,
        "added": entry.added,
        "status": entry.status,
        "expires": entry.expires,
    }
    if include_notes and entry.note:
        record["note"] = entry.note
    return record


def _write_bundle(
    out: Path, key: Ed25519PrivateKey, header: dict[str, Any], records: Iterator[dict[str, Any]]
) -> Manifest:
    """Write payload, manifest and signature to `out` atomically (temp files, then rename)."""
    check_publisher_name(header["publisher"])  # no bundle an importer could not file under its publisher
    try:
        return _write_signed(out, key, header, records)
    except OSError as exc:  # e.g. `-o` names a folder, or one that cannot be created or written
        raise BundleError(f"cannot write the bundle to {out}: {exc.strerror or exc}") from None


def _write_signed(out: Path, key: Ed25519PrivateKey, header: dict[str, Any], records: Iterator[dict[str, Any]]) -> Manifest:
    counts = _empty_counts(header["type"])
    plural = {"entry": "entries", "tombstone": "tombstones", "opinion": "opinions", "background": "background"}
    digest = hashlib.sha256()
    size = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out.parent) as payload:
        for record in records:
            line = canonical_json(record) + b"\n"
            if len(line) > MAX_RECORD_LINE:  # an importer would refuse the whole bundle
                raise InvalidEntryError(f"record {record.get('entry_id') or record.get('id')} is over {MAX_RECORD_LINE} bytes: not exportable")
            payload.write(line)
            digest.update(line)
            size += len(line)
            counts[plural[record["type"]]] += 1
        manifest = Manifest(
            **header,
            key_id=key_id(key.public_key()),
            counts=counts,
            created=utc_now(),
            payload_bytes=size,
            payload_sha256=digest.hexdigest(),
        )
        manifest_line = canonical_json(manifest.to_json())
        with atomic_write(out) as handle:
            handle.write(manifest_line + b"\n")
            handle.write(canonical_json({"signature": sign(key, manifest_line)}) + b"\n")
            payload.seek(0)
            while chunk := payload.read(1 << 20):
                handle.write(chunk)
    return manifest


def _checked_range(since: int, to_seq: int) -> int:
    """`to_seq`, once `since` is known to start a range an importer accepts: (since, to_seq]."""
    if not 0 <= since <= to_seq:
        raise InvalidEntryError(f"since {since} is outside this store's sequence numbers (0 to {to_seq}): no importer could apply that bundle")
    return to_seq


def export_list(
    store: Store, list_name: str, key: Ed25519PrivateKey, out: Path, *, since: int = 0, include_notes: bool = False
) -> Manifest:
    """A bundle of a local list's changes after `since`: entries in their current state, retracted
    ones as tombstones. Sensitive notes only with `include_notes`."""
    info = store.get_list(list_name)
    if info.imported:
        raise InvalidEntryError(f"list {list_name} was imported from {info.publisher}; only they publish it")
    to_seq = _checked_range(since, store.last_seq())
    entries = store.entries(list_name, changed_since=since, until=to_seq)
    schemes = dict(SCHEMES["entries"])  # the manifest is made after the last record: raised on the way if needed

    def records() -> Iterator[dict[str, Any]]:
        for entry in entries:
            if entry.domain and entry.domain != registrable_domain(entry.domain):
                schemes.update(HOST_DOMAINS_SCHEME)
            yield _entry_record(entry, include_notes)

    header = {
        "type": "entries",
        "publisher": info.publisher,
        "list": list_name,
        "from_seq": since,
        "to_seq": to_seq,
        "notes_included": include_notes,
        "schemes": schemes,
    }
    return _write_bundle(out, key, header, records())


def export_opinions(store: Store, publisher: str, key: Ed25519PrivateKey, out: Path, *, as_name: str, since: int = 0) -> Manifest:
    """A bundle, signed as `as_name`, of this platform's opinions on entries `publisher` published."""
    to_seq = _checked_range(since, store.last_seq())
    records = (
        {"type": "opinion", "entry_id": o.entry_id, "opinion": o.opinion, "at": o.at, "reason": o.reason, "seq": o.seq}
        for o in store.opinions(origin=publisher, since=since)
        if o.seq <= to_seq
    )
    header = {
        "type": "opinions",
        "publisher": as_name,
        "list": None,
        "from_seq": since,
        "to_seq": to_seq,
        "notes_included": False,
        "schemes": SCHEMES["opinions"],
    }
    return _write_bundle(out, key, header, records)


def export_background(store: Store, base: str, key: Ed25519PrivateKey, out: Path, *, as_name: str) -> Manifest:
    """A bundle, signed as `as_name`, of base `base`'s background cohort (fingerprints only)."""
    members = store.background_members(base)
    if not members:
        raise InvalidEntryError(f"base {base!r} has no background cohort to export")
    records = (
        {"type": "background", "base": info.base, "id": info.id, "source": info.source,
         "fingerprint": base64.b64encode(fp.to_bytes()).decode()}
        for info, fp in members
    )
    header = {"type": "background", "publisher": as_name, "list": None, "from_seq": 0, "to_seq": 0,
              "notes_included": False, "schemes": SCHEMES["background"]}
    return _write_bundle(out, key, header, records)


# -- import ------------------------------------------------------------------------------------
def _read_line(stream: IO[bytes], limit: int, what: str) -> bytes:
    line = stream.readline(limit + 1)
    if len(line) > limit:
        raise BundleError(f"bundle {what} longer than {limit} bytes")
    return line


def read_manifest(stream: IO[bytes], store: Store) -> Manifest:
    """The bundle's manifest, verified against its publisher's key in the trust store."""
    manifest_line = _read_line(stream, MAX_HEADER_LINE, "manifest").rstrip(b"\n")
    if not manifest_line:
        raise BundleError("empty file: not a modelsieve bundle")
    manifest = Manifest.from_line(manifest_line)
    trusted = accepted_key(store, manifest.publisher, manifest.key_id)
    signature_line = _read_line(stream, MAX_HEADER_LINE, "signature")
    try:
        signature = _json(signature_line)["signature"]
    except (ValueError, TypeError, KeyError):
        raise BundleError(f"unsigned bundle from {manifest.publisher!r}: refused") from None
    canonical = isinstance(signature, str) and signature_line == canonical_json({"signature": signature}) + b"\n"
    if not canonical or not verify(parse_public_key(trusted.public_key), signature, manifest_line):
        raise BundleError(f"the bundle's signature does not verify with {manifest.publisher!r}'s key: altered or forged, refused")
    return manifest


class _VerifiedPayload:
    """Payload records in order, hashed as they are read; `finish()` checks the signed totals."""

    def __init__(self, stream: IO[bytes], manifest: Manifest, stopped: Callable[[], bool]) -> None:
        self._stream = stream
        self._manifest = manifest
        self._stopped = stopped
        self._digest = hashlib.sha256()
        self._size = 0
        self._authenticate()

    def _authenticate(self) -> None:
        """Hash the whole payload against the signed manifest before any record is parsed, so
        altered bytes are refused as altered and never interpreted. Iterating hashes again, in
        case the file changes between the two reads."""
        start, digest, size = self._stream.tell(), hashlib.sha256(), 0
        while chunk := self._stream.read(min(1 << 20, self._manifest.payload_bytes + 1 - size)):
            digest.update(chunk)
            size += len(chunk)
        if size != self._manifest.payload_bytes or digest.hexdigest() != self._manifest.payload_sha256:
            raise BundleError("the bundle's payload does not match its signed manifest (altered or truncated): refused")
        self._stream.seek(start)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while line := _read_line(self._stream, MAX_RECORD_LINE, "record"):
            _stop_if(self._stopped)
            self._digest.update(line)
            self._size += len(line)
            if self._size > self._manifest.payload_bytes:
                raise BundleError("the bundle is longer than its signed manifest says: altered, refused")
            try:
                record = _json(line)
            except ValueError:
                raise BundleError("a bundle record is not valid JSON: altered or damaged, refused") from None
            if not isinstance(record, dict):
                raise BundleError("a bundle record is not a JSON object: refused")
            yield record

    def finish(self, counts: dict[str, int]) -> None:
        if self._size != self._manifest.payload_bytes or self._digest.hexdigest() != self._manifest.payload_sha256:
            raise BundleError("the bundle's payload does not match its signed manifest (altered or truncated): refused")
        if counts != self._manifest.counts:
            raise BundleError(f"the bundle's records ({counts}) differ from its manifest's counts: refused")


def _check_position(store: Store, manifest: Manifest, stream_name: str) -> int:
    position = store.sync_position(manifest.publisher, stream_name)
    what = f"{manifest.publisher}'s {stream_name}"
    if manifest.to_seq <= position:
        raise BundleError(
            f"replayed bundle: {what} is applied up to seq {position}, this bundle covers "
            f"{manifest.from_seq}..{manifest.to_seq}: nothing to do, refused"
        )
    if manifest.from_seq > position:
        raise BundleError(
            f"out-of-order bundle: {what} is applied up to seq {position}, this bundle starts after seq "
            f"{manifest.from_seq}: import the bundles in between first (or ask for an export --since {position})"
        )
    return position


def _record_seq(record: dict[str, Any], manifest: Manifest) -> int:
    seq = record.get("seq")
    if not _is_int64(seq) or not manifest.from_seq < seq <= manifest.to_seq:
        raise BundleError(f"a bundle record's seq {seq!r} lies outside the manifest's range: refused")
    return seq


def _entry_from_record(record: dict[str, Any], entry_id: str, status: str) -> NewEntry:
    fingerprint = record.get("fingerprint")
    try:
        blob = base64.b64decode(fingerprint, validate=True) if fingerprint else None
        return NewEntry(
            id=entry_id,
            category=record["category"],
            kind=record["kind"],
            digests=record.get("digests") or {},
            fingerprint=blob,
            url=record.get("url"),
            domain=record.get("domain"),
            source=record.get("source") or "",
            evidence=record["evidence"],
            first_seen=record.get("first_seen"),
            added=record.get("added"),
            expires=record.get("expires"),
            note=record.get("note"),
            status=status,
        ).validated()
    except (KeyError, TypeError, AttributeError, ValueError, InvalidEntryError) as exc:  # b64decode: binascii.Error, non-ASCII
        raise BundleError(f"bundle entry {entry_id}: invalid ({exc}): refused") from None


class _EntryApplier:
    """Applies entry and tombstone records to the local copy of a publisher's list, in batches.

    A batch holds each entry id once, so records about the same entry apply in their order (a
    batch applies its tombstones before its entries)."""

    def __init__(self, store: Store, manifest: Manifest, list_name: str, position: int) -> None:
        self._store, self._manifest, self._list, self._position = store, manifest, list_name, position
        self._pending: dict[str, dict[str, Any]] = {}
        disputes: dict[str, str] = {}
        for opinion in store.opinions(origin=manifest.publisher):
            disputes[opinion.entry_id] = opinion.opinion
        self._disputed = {entry_id for entry_id, opinion in disputes.items() if opinion == "dispute"}

    def add(self, record: dict[str, Any]) -> None:
        entry_id = record.get("entry_id")
        if not is_entry_id(entry_id):
            raise BundleError("a bundle record has no valid entry_id: refused")
        if _record_seq(record, self._manifest) <= self._position:  # older records were applied before
            return
        if entry_id in self._pending or len(self._pending) >= _APPLY_BATCH:
            self.flush()
        self._pending[entry_id] = record

    def flush(self) -> None:
        if not self._pending:
            return
        existing = self._store.entries_by_id(self._pending)
        for entry in existing.values():
            if entry.origin != self._manifest.publisher or entry.list != self._list:
                raise BundleError(f"bundle entry {entry.id} collides with an entry of list {entry.list}: refused")
        entries = []
        for entry_id, record in self._pending.items():
            if record.get("type") == "tombstone":
                if entry_id in existing and existing[entry_id].status != "retracted":
                    self._store.set_status(entry_id, "retracted", actor=self._manifest.publisher, reason="tombstone")
            else:
                status = check_choice("status", record.get("status") or "active", ("active", "disputed"))
                status = "disputed" if entry_id in self._disputed else status
                entries.append(_entry_from_record(record, entry_id, status))
        try:
            self._store.add_entries(self._list, entries, actor=self._manifest.publisher, origin=self._manifest.publisher, replace=True)
        except InvalidEntryError as exc:
            raise BundleError(f"bundle entries cannot be applied ({exc}): refused") from None
        self._pending = {}


def _pause_for_tests() -> None:
    """With MODELSIEVE_TEST_IMPORT_PAUSE=PATH: say so in PATH.paused, wait (≤ 60 s) for PATH.resume."""
    marker = os.environ.get(PAUSE_ENV)
    if not marker:
        return
    Path(marker + ".paused").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not Path(marker + ".resume").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether a file starts with a bundle manifest (so `list import` can tell bundles from hash lists)."""
    try:
        with open(path, "rb") as stream:
            first = stream.readline(MAX_HEADER_LINE)
        return bool(_json(first).get("format") == FORMAT)
    except (OSError, ValueError, AttributeError):
        return False


def _never() -> bool:
    return False


def _stop_if(stopped: Callable[[], bool]) -> None:
    if stopped():
        raise BundleError("the import was stopped before it committed (its request timed out): nothing applied")


def import_bundle(store: Store, path: str | os.PathLike[str], *, stopped: Callable[[], bool] = _never) -> ImportReport:
    """Verify a bundle and apply it in one transaction; BundleError (and no change) when refused.

    `stopped` is asked between records and last before the commit: once it says True the import
    rolls back (a server stops an import whose request timed out, so a 503 never hides a commit)."""
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, after the transaction
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path}: {exc.strerror}") from None
    with stream, store.transaction():
        manifest = read_manifest(stream, store)
        if manifest.type == "background":
            payload = _VerifiedPayload(stream, manifest, stopped)
            counts = _apply_background(store, manifest, payload)
            payload.finish(counts)
            _stop_if(stopped)
            return ImportReport(manifest.publisher, manifest.type, None, 0, 0, 0, 0, 0, counts["background"])
        stream_name = OPINIONS_STREAM if manifest.type == "opinions" else str(manifest.list)
        position = _check_position(store, manifest, stream_name)
        payload = _VerifiedPayload(stream, manifest, stopped)
        if manifest.type == "opinions":
            counts = _apply_opinions(store, manifest, payload, position)
        else:
            counts = _apply_entries(store, manifest, payload, position)
        payload.finish(counts)
        store.set_sync_position(manifest.publisher, stream_name, manifest.to_seq)
        _pause_for_tests()
        _stop_if(stopped)
    return ImportReport(
        manifest.publisher,
        manifest.type,
        manifest.list,
        manifest.from_seq,
        manifest.to_seq,
        counts["entries"],
        counts["tombstones"],
        counts["opinions"],
    )


def _apply_entries(store: Store, manifest: Manifest, payload: _VerifiedPayload, position: int) -> dict[str, int]:
    if not isinstance(manifest.list, str):
        raise BundleError("bundle manifest: an entries bundle names its list")
    local = store.find_list(manifest.publisher, manifest.list)
    if local is None:
        local = store.create_list(f"{manifest.publisher}/{manifest.list}", publisher=manifest.publisher, origin_list=manifest.list)
    applier = _EntryApplier(store, manifest, local.name, position)
    counts = {"entries": 0, "tombstones": 0, "opinions": 0}
    for record in payload:
        kind = record.get("type")
        if kind not in ("entry", "tombstone"):
            raise BundleError(f"unexpected record type {kind!r} in an entries bundle: refused")
        applier.add(record)
        counts["entries" if kind == "entry" else "tombstones"] += 1
    applier.flush()
    return counts


def _apply_opinions(store: Store, manifest: Manifest, payload: _VerifiedPayload, position: int) -> dict[str, int]:
    counts = {"entries": 0, "tombstones": 0, "opinions": 0}
    for record in payload:
        if record.get("type") != "opinion":
            raise BundleError(f"unexpected record type {record.get('type')!r} in an opinions bundle: refused")
        counts["opinions"] += 1
        if _record_seq(record, manifest) <= position:
            continue
        entry_id, opinion, at, reason = (record.get(k) for k in ("entry_id", "opinion", "at", "reason"))
        if not is_entry_id(entry_id) or opinion not in OPINIONS or not isinstance(at, str) or not isinstance(reason, str | None):
            raise BundleError("an opinion record lacks entry_id, opinion (dispute|confirm), at, or has a reason that is no text: refused")
        try:
            at, reason = normalise_timestamp(at), check_text("reason", reason or "")[:1000]
        except InvalidEntryError as exc:
            raise BundleError(f"the opinion on {entry_id}: {exc}: refused") from None
        found = store.entries_by_id([entry_id]).get(entry_id)
        if found is not None and found.origin is None:  # opinions only count on entries this platform published
            store.add_opinion(Opinion(entry_id, opinion, manifest.publisher, at, reason))
    return counts


def _apply_background(store: Store, manifest: Manifest, payload: _VerifiedPayload) -> dict[str, int]:
    """Add the bundle's cohort members (each base's in batches); sources name the publisher."""
    pending: dict[str, list[tuple[Fingerprint, str]]] = {}

    def flush(base: str) -> None:
        fps, sources = zip(*pending.pop(base), strict=True)
        try:
            store.add_background(base, fps, sources=sources)
        except ModelsieveError as exc:
            raise BundleError(f"the bundle's background models for base {base!r} cannot be added ({exc}): refused") from None

    count = 0
    for record in payload:
        if record.get("type") != "background":
            raise BundleError(f"unexpected record type {record.get('type')!r} in a background bundle: refused")
        base, blob, source = record.get("base"), record.get("fingerprint"), record.get("source", "")
        if not isinstance(base, str) or not isinstance(blob, str) or not isinstance(source, str):
            raise BundleError("a background record lacks base, fingerprint or source: refused")
        try:
            fingerprint = Fingerprint.from_bytes(base64.b64decode(blob, validate=True))
        except (ValueError, ModelsieveError) as exc:  # binascii.Error and non-ASCII text are ValueErrors
            raise BundleError(f"a background record's fingerprint is unreadable ({exc}): refused") from None
        pending.setdefault(base, []).append((fingerprint, f"{manifest.publisher}: {source}"))
        count += 1
        if len(pending[base]) >= _BACKGROUND_BATCH:
            flush(base)
    for base in list(pending):
        flush(base)
    return {"background": count}
