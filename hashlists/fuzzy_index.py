"""Candidate search for fuzzy matches: the sign codes of listed fingerprints, scanned by Hamming distance.

Each listed fingerprint contributes one 512-bit sign code per model component (the fuzzy facade's
`sign_codes`: signs of a keyed projection of its delta on the index tensors). A query's codes are
compared with every listed code of the same component by faiss's compiled Hamming kernel, block
by block (`faiss.hammings`: 64 bytes per code, SIMD popcount, 1.5–2× as fast as numpy's
per-element XOR / popcount / add passes); codes within CANDIDATE_MAX_HAMMING bits are candidates,
the closest `limit` of them go on to exact scoring (`calibration.assess`). The codes are held row-major, one
growable table per component (see `_Component`). Why an exact linear scan and not LSH, IVF, a
graph index (HNSW) or a shorter first pass: weak true matches (delta cosine 0.3–0.4) differ from
the query in up to ~40 % of the bits against 50 % for unrelated ones; each sub-linear design
measured either lost such pairs or touched 5–95 % of the rows at random in more memory than the
scan reads (numbers in the README, "Hashlists").
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fuzzy import CANDIDATE_MAX_HAMMING, INDEX_DIM, Fingerprint, sign_codes
from modelsieve.hashlists.errors import InvalidEntryError

CODE_BYTES = INDEX_DIM // 8
# Rows per faiss call. One 256 KiB distance buffer, reused, stays in cache; a buffer for the whole
# table (40 MB at 10⁷ codes) is page-faulted afresh in every query: at 10⁷ codes that doubled the
# scan's p99 (README, "Measured").
SCAN_BLOCK_ROWS = 65_536


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
    """The store's JSON text of an entry's sign codes (component → hex) as bytes; {} for none."""
    return {component: bytes.fromhex(code) for component, code in json.loads(text).items()} if text else {}


class _Component:
    """Growable code table of one component, row-major (n × CODE_BYTES uint8, the layout faiss's
    kernel reads), with the seq of each row. Rows are only ever written past `size`, so copies that
    share the arrays (FuzzyIndex.copy) keep finding exactly what they found."""

    def __init__(self) -> None:
        self.codes = np.empty((1024, CODE_BYTES), np.uint8)
        self.seqs = np.empty(1024, np.int64)
        self.size = 0

    def extend(self, codes: list[bytes], seqs: list[int]) -> None:
        needed = self.size + len(codes)
        if needed > len(self.seqs):
            capacity = max(needed, 2 * len(self.seqs))
            table = np.empty((capacity, CODE_BYTES), np.uint8)
            table[: self.size] = self.codes[: self.size]
            self.codes, self.seqs = table, np.resize(self.seqs, capacity)
        self.codes[self.size : needed] = np.frombuffer(b"".join(codes), np.uint8).reshape(len(codes), CODE_BYTES)
        self.seqs[self.size : needed] = seqs
        self.size = needed

    def within(self, code: bytes, max_hamming: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, distances) of the codes within `max_hamming` bits of `code`.

        `faiss.hammings` writes the distances of SCAN_BLOCK_ROWS rows at a time (one thread, no
        OpenMP region) into one small buffer, numpy keeps those within the bound. faiss is imported
        here, on the first scan, so commands that never match fuzzily (and `import
        modelsieve.hashlists.model`) do not load it (≈ 40 ms).
        """
        import faiss

        size, codes = self.size, self.codes  # read once: the scan covers exactly the `size` rows of this table
        query = faiss.swig_ptr(np.frombuffer(code, np.uint8))
        buffer = np.empty(min(size, SCAN_BLOCK_ROWS), np.int32)
        found_rows, found_distances = [np.empty(0, np.intp)], [np.empty(0, np.int32)]
        for start in range(0, size, SCAN_BLOCK_ROWS):
            distances = buffer[: min(SCAN_BLOCK_ROWS, size - start)]
            block = codes[start : start + len(distances)]
            # faiss's own stub file (__init__.pyi) leaves this SWIG kernel out
            faiss.hammings(query, faiss.swig_ptr(block), 1, len(distances), CODE_BYTES, faiss.swig_ptr(distances))  # type: ignore[attr-defined]
            rows = np.flatnonzero(distances <= max_hamming)
            found_rows.append(rows + start)
            found_distances.append(distances[rows])
        return np.concatenate(found_rows), np.concatenate(found_distances).astype(np.int64)


class FuzzyIndex:
    """Listed fingerprints' sign codes by component; see the module docstring. Not thread-safe."""

    def __init__(self) -> None:
        self._components: dict[str, _Component] = {}

    def __len__(self) -> int:
        return sum(c.size for c in self._components.values())

    @property
    def nbytes(self) -> int:
        return sum(c.codes.nbytes + c.seqs.nbytes for c in self._components.values())

    def copy(self) -> FuzzyIndex:
        """An index with the same contents that can grow without changing what this one finds: the
        code tables are shared, and a component only ever writes rows past the size it had when it
        was copied. Grow only the newest copy (one writer after another)."""
        twin = FuzzyIndex()
        twin._components = {name: copy.copy(component) for name, component in self._components.items()}
        return twin

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
        """(seq, Hamming distance) of the closest listed codes within `max_hamming`, closest first.

        Per component the `limit` closest rows are kept (ties broken by the lower seq), then each seq
        takes its smallest distance over the components.
        """
        if limit <= 0:
            return []
        best: dict[int, int] = {}
        for component, code in query.items():
            listed = self._components.get(component)
            if listed is None or listed.size == 0 or len(code) != CODE_BYTES:
                continue
            rows, distances = listed.within(code, max_hamming)
            seqs = listed.seqs[rows]
            if len(rows) > limit:  # the `limit` closest, ties broken by seq (deterministic)
                kth = np.partition(distances, limit - 1)[limit - 1]
                keep = distances <= kth
                seqs, distances = seqs[keep], distances[keep]
            order = np.lexsort((seqs, distances))[:limit]
            for seq, distance in zip(seqs[order].tolist(), distances[order].tolist()):
                best[seq] = min(distance, best.get(seq, distance))
        return sorted(best.items(), key=lambda pair: (pair[1], pair[0]))[:limit]
