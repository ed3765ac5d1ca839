"""The error root of modelsieve: every expected failure is one of these, with a one-line message."""


class ModelsieveError(Exception):
    """An expected failure whose message is fit to show a user as one line (no traceback)."""


class ModelFileError(ModelsieveError):
    """A model file is malformed, hostile or unsupported; the message says what and where."""


class UnsafePickleError(ModelFileError):
    """A pickle asks for code outside the allow-list (e.g. `os.system`): refused, nothing ran."""


class FingerprintError(ModelsieveError):
    """A model cannot be fingerprinted or two fingerprints cannot be compared; the message says why."""


class FingerprintMismatchError(FingerprintError):
    """Two fingerprints were taken with different keys or scheme versions, so comparing them is meaningless."""


def quoted(value: object, limit: int = 120) -> str:
    """`repr(value)` cut to `limit` characters: file-supplied names stay one short line in messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
