"""The crawl's Lookup over the store: the Matcher for URLs, digests and fingerprints, plus the fingerprint key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelsieve.fingerprint.fuzzy import fingerprint_tensors, select_tensors
from modelsieve.fingerprint.readers.base import TensorInfo
from modelsieve.fingerprint.readers.safetensors import SafetensorsHeader
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import Match


@dataclass(frozen=True)
class StoreLookup:
    """Answers the crawler's questions from a Matcher, fingerprinting with the matcher's key and bases."""

    matcher: Matcher

    def match_url(self, url: str) -> Sequence[Match]:
        return self.matcher.match_url(url)

    def match_digests(self, digests: Mapping[str, str]) -> Sequence[Match]:
        return self.matcher.match_digests(digests)

    def select_tensors(self, infos: Sequence[TensorInfo], budget_fraction: float) -> Sequence[TensorInfo]:
        return select_tensors(infos, budget_fraction)

    def match_tensors(self, header: SafetensorsHeader, arrays: Mapping[str, np.ndarray]) -> Sequence[Match]:
        """Near-copy matches of the tensors' fingerprint; FingerprintError when they make none."""
        fingerprint = fingerprint_tensors(arrays, self.matcher.fingerprint_key, self.matcher.bases, threads=1)
        return self.matcher.match_fingerprint(fingerprint)
