"""Fingerprint keys and the keyed random projections they seed.

A fingerprint is a set of random projections of a model's weights. Whoever knows the projections
can craft a tiny perturbation that nulls them, so the projections are derived from a secret key:
a consortium of platforms shares one key and fingerprints only compare within it. The built-in
`PUBLIC_KEY` exists for tests, demos and public lists; it protects nothing.

A key is written as one line of text, `KEY_ID:HEX_SECRET` (a file, or the environment variable
`MODELSIEVE_FINGERPRINT_KEY` holding either that line or the path of such a file).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cachetools
import numpy as np

from modelsieve.fingerprint.errors import FingerprintError

KEY_ENV = "MODELSIEVE_FINGERPRINT_KEY"
SKETCH_SIZE = 12  # k: each 2-D weight becomes a k×k sketch, each 1-D weight a k-vector
MIN_SECRET_BYTES = 16
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class FingerprintKey:
    """A named secret that seeds every projection; `check` tells two secrets with one name apart."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.key_id):
            raise FingerprintError(f"fingerprint key id {self.key_id!r} must be 1-64 of A-Z a-z 0-9 . _ -")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise FingerprintError(f"fingerprint key secret must be at least {MIN_SECRET_BYTES} bytes")

    @property
    def check(self) -> str:
        """8 hex digits derived from the secret: fingerprints record it, so a wrong secret is caught."""
        return hashlib.blake2b(self.secret, digest_size=4, person=b"msfp-keycheck").hexdigest()

    @classmethod
    def generate(cls, key_id: str) -> FingerprintKey:
        """A new random 32-byte key (for a consortium: generate once, share privately)."""
        return cls(key_id, secrets.token_bytes(32))

    def to_text(self) -> str:
        """The one-line `KEY_ID:HEX_SECRET` form that `parse_key` reads."""
        return f"{self.key_id}:{self.secret.hex()}"


PUBLIC_KEY = FingerprintKey("public", b"modelsieve public fingerprint key (protects nothing)")


def parse_key(text: str) -> FingerprintKey:
    """A key from its `KEY_ID:HEX_SECRET` line."""
    key_id, sep, secret_hex = text.strip().partition(":")
    if not sep:
        raise FingerprintError("fingerprint key must be written as KEY_ID:HEX_SECRET")
    try:
        secret = bytes.fromhex(secret_hex)
    except ValueError:
        raise FingerprintError(f"fingerprint key {key_id!r}: the secret is not hexadecimal") from None
    return FingerprintKey(key_id, secret)


def load_key(path: str | os.PathLike[str] | None = None) -> FingerprintKey:
    """The key from `path`, else from `$MODELSIEVE_FINGERPRINT_KEY` (a key line or a file), else PUBLIC_KEY."""
    if path is None:
        value = os.environ.get(KEY_ENV, "").strip()
        if not value:
            return PUBLIC_KEY
        if ":" in value and not Path(value).is_file():
            return parse_key(value)
        path = value
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FingerprintError(f"cannot read the fingerprint key file {path}: {exc}") from None
    return parse_key(text)


PROJECTION_CACHE_BYTES = 256 << 20
"""Projections stay cached up to this many bytes in all (an SDXL checkpoint's take ~50 MB): bounded
by size, not count, so hostile files with many long, distinct shapes cannot fill it with gigabytes."""


def _projection(secret: bytes, length: int, role: str) -> np.ndarray:
    seed = hashlib.blake2b(f"{role}:{length}".encode(), key=secret[:64], digest_size=32).digest()
    generator = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "little")))
    matrix = generator.standard_normal((length, SKETCH_SIZE), dtype=np.float32)
    matrix *= np.float32(1.0 / np.sqrt(SKETCH_SIZE))  # E‖RᵀW C‖² = ‖W‖², for 1-D and 2-D alike
    matrix.setflags(write=False)
    return matrix


def projection(key: FingerprintKey, shape: tuple[int, ...], side: str) -> np.ndarray:
    """The (n × k) projection for one side ("rows" or "cols") of a 2-D view, or of a 1-D vector.

    Seeded by the key, the whole view shape and the side, so tensors of one shape share their
    projections (which lets a base resolve tensors by shape and sketch when names are unknown).
    """
    length = shape[0] if side == "rows" else shape[1]
    return _cached_projection(key.secret, length, f"{side}:{'x'.join(map(str, shape))}")


_projection_cache: cachetools.LRUCache[tuple[object, ...], np.ndarray] = cachetools.LRUCache(
    PROJECTION_CACHE_BYTES, getsizeof=lambda matrix: matrix.nbytes
)
_cached_projection = cachetools.cached(_projection_cache, lock=threading.Lock())(_projection)
