"""The expected failures of hashlists, each a ModelsieveError with a one-line message."""

from __future__ import annotations

from modelsieve.fingerprint.errors import ModelsieveError


class InvalidEntryError(ModelsieveError):
    """A list entry, digest value, URL, list name or field value is malformed."""


class NotFoundError(ModelsieveError):
    """A list, entry or trusted publisher named by the caller does not exist."""


class BundleError(ModelsieveError):
    """A bundle is malformed, tampered with, unsigned, from an unknown publisher, replayed or out of order."""


class SchemaError(ModelsieveError):
    """The store's schema is newer than this code, or otherwise unusable."""


class StoreUnavailableError(ModelsieveError):
    """The store cannot be reached (a database server down or refusing us) or its backend is not installed."""
