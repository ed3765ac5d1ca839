"""The base-model registry: raw fingerprints of public bases (SD 1.5, SDXL, ...) deltas are taken against.

Stores sketches only, never weights. One row per base name; a base is usable only with the
fingerprint key it was taken with, so `load_bases(db, key)` returns the bases of that key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlite_utils

from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import BaseModel, Fingerprint, FingerprintKey

TABLE = "fuzzy_bases"


@dataclass(frozen=True)
class BaseInfo:
    """A registry row without its sketches."""

    name: str
    key_id: str
    key_check: str
    scheme: int
    tensors: int
    source: str
    added: str


def _table(db: sqlite_utils.Database) -> sqlite_utils.db.Table:
    table = db[TABLE]
    if not table.exists():
        table.create({"name": str, "key_id": str, "key_check": str, "scheme": int, "tensors": int, "source": str,
                      "added": str, "fingerprint": bytes}, pk="name", not_null={"fingerprint"})
    return table


def add_base(db: sqlite_utils.Database, name: str, fingerprint: Fingerprint, *, source: str = "",
             replace: bool = False) -> BaseInfo:
    """Register a raw checkpoint fingerprint as base `name` (refuses deltas, LoRAs and taken names)."""
    if not name.strip() or len(name) > 256:
        raise ModelsieveError("a base name must be 1-256 characters")
    BaseModel(name, fingerprint)  # validates: a raw checkpoint fingerprint
    table = _table(db)
    with db.conn:
        if not replace and table.count_where("name = ?", [name]):
            raise ModelsieveError(f"a base named {name!r} is already registered (use --replace to overwrite it)")
        row = {"name": name, "key_id": fingerprint.key_id, "key_check": fingerprint.key_check, "scheme": fingerprint.scheme,
               "tensors": len(fingerprint.sketches), "source": source,
               "added": datetime.now(UTC).isoformat(timespec="seconds"), "fingerprint": fingerprint.to_bytes()}
        table.insert(row, replace=True)
    return _info(row)


def _info(row: dict) -> BaseInfo:
    return BaseInfo(row["name"], row["key_id"], row["key_check"], row["scheme"], row["tensors"], row["source"], row["added"])


def list_bases(db: sqlite_utils.Database) -> list[BaseInfo]:
    """Every registered base, by name."""
    if not db[TABLE].exists():
        return []
    return [_info(row) for row in db[TABLE].rows_where(order_by="name")]


def load_bases(db: sqlite_utils.Database, key: FingerprintKey) -> list[BaseModel]:
    """The bases registered with `key` (id and secret check), ready for `fingerprint_model(..., bases=)`."""
    if not db[TABLE].exists():
        return []
    rows = db[TABLE].rows_where("key_id = ? and key_check = ?", [key.key_id, key.check], order_by="name")
    return [BaseModel(row["name"], Fingerprint.from_bytes(row["fingerprint"])) for row in rows]


def remove_base(db: sqlite_utils.Database, name: str) -> None:
    """Forget base `name`; ModelsieveError when there is none."""
    table = _table(db)
    with db.conn:
        if not table.count_where("name = ?", [name]):
            raise ModelsieveError(f"no base named {name!r} is registered")
        table.delete(name)
