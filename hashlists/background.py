"""Background cohorts in the store: sketches of known-benign models derived from each registered base.

Stores fingerprints only, never weights. One row per (base, fingerprint); a fingerprint's
SHA-256 identifies it, so adding or importing the same one twice changes nothing. Cohorts are
usable only with the key their members were taken with: `load_cohorts(db, key)` returns those.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from modelsieve.fingerprint.calibration import Cohort
from modelsieve.fingerprint.errors import FingerprintError, ModelsieveError
from modelsieve.fingerprint.fpformat import Fingerprint
from modelsieve.fingerprint.keys import FingerprintKey
from modelsieve.hashlists.model import utc_now

TABLE = "fuzzy_background"
MAX_SOURCE = 1000


@dataclass(frozen=True)
class BackgroundInfo:
    """A cohort member without its sketches."""

    id: str  # SHA-256 of the fingerprint bytes
    base: str
    kind: str
    key_id: str
    tensors: int
    source: str
    added: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "base": self.base, "kind": self.kind, "key_id": self.key_id, "tensors": self.tensors,
                "source": self.source, "added": self.added}


def _table(db: sqlite_utils.Database) -> sqlite_utils.db.Table:
    table = db[TABLE]
    if not table.exists():
        table.create({"id": str, "base": str, "kind": str, "key_id": str, "key_check": str, "scheme": int, "tensors": int,
                      "source": str, "added": str, "fingerprint": bytes}, pk="id", not_null={"fingerprint", "base"})
        table.create_index(["base"], if_not_exists=True)
    return table


def _info(row: Mapping[str, Any]) -> BackgroundInfo:
    return BackgroundInfo(row["id"], row["base"], row["kind"], row["key_id"], row["tensors"], row["source"], row["added"])


def add_background(db: sqlite_utils.Database, base: str, fingerprints: Iterable[Fingerprint], *,
                   sources: Sequence[str] = ()) -> list[BackgroundInfo]:
    """Add benign delta fingerprints to base `base`'s cohort, in one transaction; returns the new rows.

    `sources` (optional, one per fingerprint) says where each came from. Refuses raw fingerprints,
    deltas of another base and keys other than the cohort's so far.
    """
    fps = list(fingerprints)
    labels = list(sources) or [""] * len(fps)
    if len(labels) != len(fps):
        raise ModelsieveError("add_background: give one source per fingerprint, or none")
    if not base.strip() or len(base) > 256:
        raise ModelsieveError("a base name must be 1-256 characters")
    table = _table(db)
    existing = next(iter(table.rows_where("base = ?", [base], limit=1)), None)
    if existing is not None:
        fps = [Fingerprint.from_bytes(existing["fingerprint"]), *fps]
    Cohort(base, fps)  # validates deltas, base and one key for every member
    if existing is not None:
        fps = fps[1:]
    added = []
    with db.conn:
        for fp, source in zip(fps, labels, strict=True):
            blob = fp.to_bytes()
            row = {"id": hashlib.sha256(blob).hexdigest(), "base": base, "kind": fp.kind, "key_id": fp.key_id,
                   "key_check": fp.key_check, "scheme": fp.scheme, "tensors": len(fp.sketches),
                   "source": source[:MAX_SOURCE], "added": utc_now(), "fingerprint": blob}
            if not table.count_where("id = ? and base = ?", [row["id"], base]):
                table.insert(row, replace=True)
                added.append(_info(row))
    return added


def list_background(db: sqlite_utils.Database, base: str | None = None) -> list[BackgroundInfo]:
    """Cohort members (of one base, or all), by base then time added."""
    where, args = ("base = ?", [base]) if base is not None else (None, [])
    return [_info(r) for r in _table(db).rows_where(where, args, order_by="base, added, id",
                                                    select="id, base, kind, key_id, tensors, source, added")]


def remove_background(db: sqlite_utils.Database, member_id: str) -> None:
    """Drop one cohort member by id (or a unique id prefix of 8+ hex digits)."""
    table = _table(db)
    ids = [r["id"] for r in table.rows_where("id like ?", [member_id.lower() + "%"], select="id")] if len(member_id) >= 8 else []
    if len(ids) != 1:
        raise ModelsieveError(f"no single background model has id {member_id!r}" + (" (ambiguous prefix)" if ids else ""))
    with db.conn:
        table.delete(ids[0])


def load_cohorts(db: sqlite_utils.Database, key: FingerprintKey) -> dict[str, Cohort]:
    """Every base's cohort of fingerprints taken with `key`, ready for `calibration.calibrate`."""
    members: dict[str, list[Fingerprint]] = defaultdict(list)
    for row in _table(db).rows_where("key_id = ? and key_check = ?", [key.key_id, key.check], order_by="base, added, id"):
        try:
            members[row["base"]].append(Fingerprint.from_bytes(row["fingerprint"]))
        except FingerprintError as exc:
            raise ModelsieveError(f"background model {row['id'][:12]} of base {row['base']!r} is unreadable: {exc}") from None
    return {base: Cohort(base, fps) for base, fps in members.items()}
