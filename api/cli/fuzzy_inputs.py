"""Shared by the fuzzy-fingerprint commands: the key option, the bases to use, and reading a
fingerprint from either a model file or a saved fingerprint (binary `.msfp` or its JSON form)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from modelsieve.fingerprint.errors import FingerprintError, ModelsieveError
from modelsieve.fingerprint.fuzzy import BaseModel, Fingerprint, FingerprintKey, fingerprint_model, load_key
from modelsieve.fingerprint.readers import open_model
from modelsieve.hashlists.db import DB_ENV, default_db_path
from modelsieve.hashlists.store import open_store

FINGERPRINT_SUFFIX = ".msfp"
_MAX_SAVED_FINGERPRINT = 64 << 20


def add_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fingerprint-key",
        metavar="FILE",
        help="file holding the fingerprint key (KEY_ID:HEX_SECRET); default: $MODELSIEVE_FINGERPRINT_KEY, else the "
        "public key",
    )


def add_base_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", action="append", default=[], metavar="PATH",
                        help="a base model file or saved base fingerprint to take deltas against (repeatable); "
                        "registered bases in the store are used as well")


def fingerprint_key(args: argparse.Namespace) -> FingerprintKey:
    return load_key(args.fingerprint_key)


def read_saved(path: Path) -> Fingerprint | None:
    """The fingerprint saved in `path` (binary or JSON form), or None when it holds a model instead."""
    with open(path, "rb") as handle:
        head = handle.read(4)
        if head[:1] not in (b"M", b"{"):
            return None
        handle.seek(0)
        data = handle.read(_MAX_SAVED_FINGERPRINT + 1)
    if len(data) > _MAX_SAVED_FINGERPRINT:
        return None
    try:
        if head == b"MSFP":
            return Fingerprint.from_bytes(data)
        if head[:1] == b"{":
            try:
                record = json.loads(data.splitlines()[0])
            except (ValueError, UnicodeDecodeError):
                raise FingerprintError("neither a model nor a fingerprint in JSON form") from None
            return Fingerprint.from_json(record)
    except FingerprintError as exc:  # say which of the inputs it is
        raise type(exc)(f"{path}: {exc}") from None
    return None


def bases_for(args: argparse.Namespace, key: FingerprintKey) -> list[BaseModel]:
    """`--base` files plus the bases registered in the store (when the store exists or --db is given)."""
    bases = []
    for path in args.base:
        bases.append(BaseModel(Path(path).stem, load_fingerprint(path, key, [])))
    if args.db is not None or os.environ.get(DB_ENV) or default_db_path().exists():
        with open_store(args.db) as store:
            bases.extend(store.bases(key))
    return bases


def load_fingerprint(path: str | os.PathLike[str], key: FingerprintKey, bases: list[BaseModel],
                     *, require_base: bool = False) -> Fingerprint:
    """A saved fingerprint as is, or a model file fingerprinted (as a delta against the nearest base)."""
    path = Path(path)
    if not path.exists():
        raise ModelsieveError(f"{path}: no such file or directory")
    saved = read_saved(path) if path.is_file() else None
    if saved is not None:
        return saved
    with open_model(path) as reader:
        return fingerprint_model(reader, key, bases, require_base=require_base)


