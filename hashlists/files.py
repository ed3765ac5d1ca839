"""What a model file is to the lists: its digests and, when it can be taken, its fuzzy fingerprint."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from modelsieve.fingerprint.digests import DIGEST_NAMES, hash_file
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import PUBLIC_KEY, BaseModel, Fingerprint, FingerprintKey, fingerprint_model
from modelsieve.fingerprint.readers import open_model


@dataclass(frozen=True)
class FileEvidence:
    """A file's digests (every name the contract knows), its fingerprint, and why it has none."""

    path: str
    digests: dict[str, str]
    fingerprint: Fingerprint | None
    problem: str | None = None


def examine_file(
    path: str | os.PathLike[str], key: FingerprintKey = PUBLIC_KEY, bases: Sequence[BaseModel] = ()
) -> FileEvidence:
    """Hash the whole file, then fingerprint its tensors; a file that is no readable model (or has no
    float tensors) keeps its digests and says why in `problem`. Unreadable files raise ModelFileError."""
    digests = {name: value for name, value in hash_file(path, DIGEST_NAMES).digests.items() if value}
    try:
        with open_model(path) as reader:
            fingerprint = fingerprint_model(reader, key, bases)
    except ModelsieveError as exc:  # the reason, without the path the reader's message starts with
        return FileEvidence(str(path), digests, None, f"not fingerprinted: {str(exc).removeprefix(f'{path}: ')}")
    return FileEvidence(str(path), digests, fingerprint)
