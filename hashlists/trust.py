"""The trust store: which publishers' keys this platform accepts bundles from, and how far.

Levels: `full` — their entries act like this platform's own; `review` — their entries match but
each match carries trust "review" so a person confirms before acting; `none` — their bundles are
refused and their entries already imported stop matching (a key withdrawn or compromised).
"""

from __future__ import annotations

from modelsieve.hashlists.errors import BundleError, InvalidEntryError
from modelsieve.hashlists.model import TrustedKey, check_choice, check_publisher_name, utc_now
from modelsieve.hashlists.signing import key_id, parse_public_key, public_key_text
from modelsieve.hashlists.store import Store

TRUST_LEVELS = ("full", "review", "none")


def trust_publisher(store: Store, name: str, public_key: str, level: str, *, replace: bool = False) -> TrustedKey:
    """Add a publisher's key, or change the trust level of the key it has. Another key for a
    publisher already trusted is a key rotation and needs `replace`: from then on, bundles signed
    with the old key are refused."""
    check_choice("level", level, TRUST_LEVELS)
    check_publisher_name(name)
    key = parse_public_key(public_key)
    trusted = TrustedKey(name=name, public_key=public_key_text(key), key_id=key_id(key), level=level, added=utc_now())
    current = store.trusted_key(name)
    if current is not None and current.key_id != trusted.key_id and not replace:
        raise InvalidEntryError(
            f"{name} is trusted with key {current.key_id}, not {trusted.key_id}: add --replace to trust the new key "
            "instead (only after checking it with the publisher)"
        )
    for other in store.trusted_keys():  # else that publisher could sign bundles in this one's name
        if other.key_id == trusted.key_id and other.name != name:
            raise InvalidEntryError(f"key {trusted.key_id} is trusted as {other.name!r} already: one key speaks for one publisher")
    store.put_trusted_key(trusted)
    return trusted


def accepted_key(store: Store, publisher: str, signing_key_id: str) -> TrustedKey:
    """The trusted key a bundle from `publisher` signed with `signing_key_id` must verify against."""
    trusted = store.trusted_key(publisher)
    if trusted is None:
        raise BundleError(
            f"unknown publisher {publisher!r}: add their public key first (modelsieve trust add {publisher} KEY --level ...)"
        )
    if trusted.level == "none":
        raise BundleError(f"publisher {publisher!r} is trusted at level none: their bundles are refused")
    if trusted.key_id != signing_key_id:
        raise BundleError(
            f"the bundle is signed with key {signing_key_id}, but the trust store holds key {trusted.key_id} for {publisher!r}"
        )
    return trusted
