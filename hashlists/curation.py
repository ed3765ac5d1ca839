"""Judgements on entries: a publisher retracts its own; anyone disputes or confirms what it imported.

A retraction is the publisher's: it travels in the next bundle as a tombstone and removes the
match on every importer. A dispute of an imported entry is local (the entry keeps matching, flagged
`disputed`) and is recorded as an opinion the platform can export to the publisher.
"""

from __future__ import annotations

from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.model import Entry, Opinion, check_text, utc_now
from modelsieve.hashlists.store import Store


def retract(store: Store, entry_id: str, *, reason: str = "", actor: str = "") -> Entry:
    """Retract one of this platform's own entries (a false positive): it never matches again.
    Retracting a retracted entry changes nothing (a retried request makes no second tombstone)."""
    check_text("reason", reason)
    with store.transaction():
        entry = store.get_entry(entry_id)
        if entry.origin is not None:
            raise InvalidEntryError(
                f"entry {entry_id} was published by {entry.origin}; only they can retract it "
                "(dispute it here instead and tell them)"
            )
        if entry.status == "retracted":
            return entry
        return store.set_status(entry_id, "retracted", actor=actor, reason=reason)


def _record_opinion(store: Store, entry: Entry, opinion: str, reason: str, by: str) -> None:
    if entry.origin is not None:
        store.add_opinion(Opinion(entry.id, opinion, by, utc_now(), reason, entry.origin))


def dispute(store: Store, entry_id: str, *, reason: str = "", by: str = "local") -> Entry:
    """Flag an entry as a suspected false positive: it still matches, with status "disputed"."""
    check_text("reason", reason)
    with store.transaction():
        entry = store.get_entry(entry_id)
        if entry.status == "retracted":
            raise InvalidEntryError(f"entry {entry_id} is retracted already")
        _record_opinion(store, entry, "dispute", reason, by)
        return store.set_status(entry_id, "disputed", actor=by, reason=reason)


def confirm(store: Store, entry_id: str, *, reason: str = "", by: str = "local") -> Entry:
    """Confirm an entry (lifting this platform's dispute of it)."""
    check_text("reason", reason)
    with store.transaction():
        entry = store.get_entry(entry_id)
        if entry.status == "retracted":
            raise InvalidEntryError(f"entry {entry_id} is retracted; only its publisher can list it again")
        _record_opinion(store, entry, "confirm", reason, by)
        return store.set_status(entry_id, "active", actor=by, reason=reason) if entry.status == "disputed" else entry

