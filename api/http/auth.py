"""API keys: random bearer tokens with scopes, stored only as SHA-256 digests in the store.

A key reads `msk_<id>_<secret>`: `id` (8 hex) finds the row, `secret` (32 random bytes,
url-safe base64) is checked against its stored SHA-256 in constant time. A salted slow hash is
not needed: the secret has 256 bits of entropy, so its digest cannot be brute-forced.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from modelsieve.api.http.ratelimit import TokenBucket
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.model import StoredApiKey
from modelsieve.hashlists.store import Store

SCOPES = ("lookup", "crawl", "lists:read", "lists:write", "admin")
SCOPE_HELP = {
    "lookup": "exact lookups and matches of digests, fingerprints and uploaded files",
    "crawl": "submit crawl jobs and read their recommendations",
    "lists:read": "export list bundles",
    "lists:write": "import list bundles and record opinions (dispute / confirm) on entries",
    "admin": "everything above, and /metrics",
}
ANY_SCOPE = "*"  # a route any valid key may call, whatever its scopes
KEY_PATTERN = re.compile(r"^msk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    """A key's public record (never its secret)."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    rate_per_second: float | None
    created_at: float
    revoked_at: float | None

    def allows(self, scope: str) -> bool:
        """Whether the key may use a route of `scope` (admin may use every route)."""
        return scope == ANY_SCOPE or scope in self.scopes or "admin" in self.scopes


class KeyStore:
    """API keys made and checked here, kept (as digests) in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, scopes: Iterable[str], name: str = "", rate_per_second: float | None = None) -> tuple[str, ApiKey]:
        """Make a key; returns the token (shown once, never stored) and its record."""
        scopes = tuple(dict.fromkeys(scopes))
        unknown = [s for s in scopes if s not in SCOPES]
        if not scopes or unknown:
            raise ModelsieveError(f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
        if rate_per_second is not None and rate_per_second <= 0:
            raise ModelsieveError("a key's rate limit must be positive")
        key_id = secrets.token_hex(4)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        stored = StoredApiKey(key_id, _digest(secret), name, scopes, rate_per_second, time.time(), None)
        self.store.add_api_key(stored)
        return f"msk_{key_id}_{secret}", _public(stored)

    def verify(self, token: str) -> ApiKey | None:
        """The live key a token belongs to, or None for a malformed, unknown, wrong or revoked one."""
        found = KEY_PATTERN.match(token)
        if not found:
            return None
        key_id, secret = found.groups()
        return _live_key(self.record(key_id), secret)

    def record(self, key_id: str) -> StoredApiKey | None:
        """The stored record of one key (its secret's digest included), or None."""
        return self.store.api_key(key_id)

    def records(self) -> list[StoredApiKey]:
        """Every key's stored record, revoked ones too (secrets' digests included)."""
        return self.store.api_keys()

    def revoke(self, key_id: str) -> None:
        """Revoke a live key; ModelsieveError when there is none with that id."""
        if not self.store.revoke_api_key(key_id, time.time()):
            raise ModelsieveError(f"no live API key with id {key_id}")

    def all(self) -> list[ApiKey]:
        """Every key, revoked ones too (never their secrets)."""
        return [_public(stored) for stored in self.records()]


def _live_key(stored: StoredApiKey | None, secret: str) -> ApiKey | None:
    """`stored`'s public record when it exists, `secret` is its secret and it is not revoked."""
    if stored is None or not hmac.compare_digest(stored.secret_sha256, _digest(secret)) or stored.revoked_at is not None:
        return None
    return _public(stored)


def _public(stored: StoredApiKey) -> ApiKey:
    return ApiKey(stored.key_id, stored.name, stored.scopes, stored.rate_per_second, stored.created_at, stored.revoked_at)


class CachedKeys:
    """Tokens checked against a copy of every key record, re-read from the store every `seconds`.

    Revoking a key therefore takes effect within `seconds` on every server process. A key id the
    copy lacks (a key made since, or an invented one) is looked up in the store at most
    `unknown_reads_per_second` times a second, so requests with made-up tokens, however many, cost
    the store almost nothing, while live keys never wait for those lookups. `seconds` 0 checks
    every token in the store.
    """

    def __init__(self, store: KeyStore, seconds: float, unknown_reads_per_second: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.seconds, self.clock = store, seconds, clock
        self._unknown_reads = TokenBucket(unknown_reads_per_second, unknown_reads_per_second,
                                          unknown_reads_per_second, clock())
        self._records: dict[str, StoredApiKey] = {}
        self._read_at: float | None = None

    def verify(self, token: str) -> ApiKey | None:
        """The live key a bearer token belongs to, or None for a malformed, unknown, wrong or revoked one."""
        if self.seconds <= 0:
            return self.store.verify(token)
        found = KEY_PATTERN.match(token)
        if not found:
            return None
        key_id, secret = found.groups()
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.seconds:
            self._records = {stored.key_id: stored for stored in self.store.records()}
            self._read_at = now
        if key_id not in self._records and not self._unknown_reads.take(now):
            stored = self.store.record(key_id)
            if stored is not None:
                self._records[key_id] = stored
        return _live_key(self._records.get(key_id), secret)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
