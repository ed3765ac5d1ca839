"""Candidate search for fuzzy matches: the sign codes of listed fingerprints, scanned by Hamming distance.

Each listed fingerprint contributes one 512-bit sign code per model component (the fuzzy facade's
`sign_codes`: signs of a keyed projection of its delta on the index tensors). A query's codes are
compared with every listed code of the same component in one vectorised pass (64 bytes per code,
XOR + popcount at memory speed); codes within CANDIDATE_MAX_HAMMING bits are candidates, the
closest `limit` of them go on to exact scoring with `compare`. Why a scan and not banded LSH:
weak true matches (delta cosine 0.3–0.4) differ from the query in ~40 % of the bits against 50 %
for unrelated ones; LSH tables that find such pairs with good recall would need more memory than
the scan touches (see the README, "Hashlists").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fuzzy import CANDIDATE_MAX_HAMMING, INDEX_DIM, Fingerprint, hamming_distances, sign_codes
from modelsieve.hashlists.errors import InvalidEntryError

CODE_BYTES = INDEX_DIM // 8
SCAN_ROWS = 16_384  # codes scanned per step: the step's temporaries (2 MiB) stay in cache


def parse_fingerprint(blob: bytes) -> Fingerprint:
    """A stored or imported fingerprint, validated; InvalidEntryError when malformed."""
    try:
        return Fingerprint.from_bytes(blob)
    except FingerprintError as exc:
        raise InvalidEntryError(f"invalid fingerprint: {exc}") from None


def stored_codes(blob: bytes) -> str:
    """A fingerprint's sign codes as the store keeps them: {"component": "hex", ...} (JSON text)."""
    codes = sign_codes(parse_fingerprint(blob))
    return json.dumps({component: code.hex() for component, code in sorted(codes.items())}, separators=(",", ":"))


def decode_codes(text: str | None) -> dict[str, bytes]:
    return {component: bytes.fromhex(code) for component, code in json.loads(text).items()} if text else {}


class _Component:
    """Growable (n × CODE_BYTES) code matrix with the seq of each row."""

    def __init__(self) -> None:
        self.codes = np.empty((1024, CODE_BYTES), np.uint8)
        self.seqs = np.empty(1024, np.int64)
        self.size = 0

    def extend(self, codes: list[bytes], seqs: list[int]) -> None:
        needed = self.size + len(codes)
        if needed > len(self.seqs):
            capacity = max(needed, 2 * len(self.seqs))
            self.codes = np.resize(self.codes, (capacity, CODE_BYTES))
            self.seqs = np.resize(self.seqs, capacity)
        block = np.frombuffer(b"".join(codes), np.uint8).reshape(len(codes), CODE_BYTES)
        self.codes[self.size : needed] = block
        self.seqs[self.size : needed] = seqs
        self.size = needed


class FuzzyIndex:
    """Listed fingerprints' sign codes by component; see the module docstring. Not thread-safe."""

    def __init__(self) -> None:
        self._components: dict[str, _Component] = {}

    def __len__(self) -> int:
        return sum(c.size for c in self._components.values())

    @property
    def nbytes(self) -> int:
        return sum(c.codes.nbytes + c.seqs.nbytes for c in self._components.values())

    def add_many(self, rows: Iterable[tuple[int, Mapping[str, bytes]]]) -> None:
        """Index (seq, codes) pairs; a row whose code has the wrong size is skipped."""
        grouped: dict[str, tuple[list[bytes], list[int]]] = {}
        for seq, codes in rows:
            for component, code in codes.items():
                if len(code) == CODE_BYTES:
                    block = grouped.setdefault(component, ([], []))
                    block[0].append(code)
                    block[1].append(seq)
        for component, (codes_list, seqs) in grouped.items():
            self._components.setdefault(component, _Component()).extend(codes_list, seqs)

    def candidates(self, query: Mapping[str, bytes], *, limit: int = 100, max_hamming: int = CANDIDATE_MAX_HAMMING) -> list[tuple[int, int]]:
        """(seq, Hamming distance) of the closest listed codes within `max_hamming`, closest first."""
        best: dict[int, int] = {}
        for component, code in query.items():
            listed = self._components.get(component)
            if listed is None or listed.size == 0 or len(code) != CODE_BYTES:
                continue
            distances = np.concatenate(
                [hamming_distances(code, listed.codes[start : min(start + SCAN_ROWS, listed.size)])
                 for start in range(0, listed.size, SCAN_ROWS)]
            )
            close = np.flatnonzero(distances <= max_hamming)
            if len(close) > limit:
                close = close[np.argpartition(distances[close], limit)[:limit]]
            for row in close:
                seq, distance = int(listed.seqs[row]), int(distances[row])
                best[seq] = min(distance, best.get(seq, distance))
        return sorted(best.items(), key=lambda pair: (pair[1], pair[0]))[:limit]
