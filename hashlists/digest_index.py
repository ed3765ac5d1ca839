"""An in-memory index from digest values to entry sequence numbers, compact enough for 10⁶+ entries.

Per digest name it holds a sorted array of 64-bit keys (the first 16 hex of the value; AutoV3's
first 12, so a full value and a Civitai 12-hex prefix meet) beside the entries' seqs: 16 bytes per
digest per entry, a binary search per lookup. Entries added later go to a small dict overlay until
the next compaction. Keys are prefixes: a hit is a candidate the caller confirms on the full value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelsieve.hashlists.model import AUTOV3_PREFIX, DIGEST_LENGTHS

COMPACT_AFTER = 100_000


def digest_key(name: str, value: str) -> int:
    """The 64-bit index key of a normalised digest value."""
    return int(value[:AUTOV3_PREFIX] if name == "autov3" else value[:16], 16)


class DigestIndex:
    """Digest value → candidate entry seqs; see the module docstring. Not thread-safe on its own."""

    def __init__(self) -> None:
        self._keys = {name: np.empty(0, np.uint64) for name in DIGEST_LENGTHS}
        self._seqs = {name: np.empty(0, np.int64) for name in DIGEST_LENGTHS}
        self._overlay: dict[str, dict[int, list[int]]] = {name: {} for name in DIGEST_LENGTHS}
        self._overlay_size = 0

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys.values()) + self._overlay_size

    @property
    def nbytes(self) -> int:
        """Bytes held by the sorted arrays (the overlay is bounded by COMPACT_AFTER)."""
        return sum(a.nbytes for a in self._keys.values()) + sum(a.nbytes for a in self._seqs.values())

    def copy(self) -> DigestIndex:
        """An index with the same contents that can grow without changing this one (the sorted
        arrays are shared: they are replaced, never written, when an index grows)."""
        twin = DigestIndex()
        twin._keys, twin._seqs = dict(self._keys), dict(self._seqs)
        twin._overlay = {name: {key: list(seqs) for key, seqs in overlay.items()} for name, overlay in self._overlay.items()}
        twin._overlay_size = self._overlay_size
        return twin

    def add(self, seq: int, digests: Mapping[str, str]) -> None:
        """Index one entry's digests under its seq (in the overlay, merged in once it holds COMPACT_AFTER)."""
        for name, value in digests.items():
            self._overlay[name].setdefault(digest_key(name, value), []).append(seq)
            self._overlay_size += 1
        if self._overlay_size >= COMPACT_AFTER:
            self.compact()

    def compact(self) -> None:
        """Fold the overlay into the sorted arrays (done by `add` every COMPACT_AFTER digests)."""
        keys: dict[str, list[int]] = {name: [] for name in DIGEST_LENGTHS}
        seqs: dict[str, list[int]] = {name: [] for name in DIGEST_LENGTHS}
        for name, overlay in self._overlay.items():
            for key, key_seqs in overlay.items():
                keys[name] += [key] * len(key_seqs)
                seqs[name] += key_seqs
            overlay.clear()
        self._overlay_size = 0
        self._merge(keys, seqs)

    def _merge(self, keys: Mapping[str, list[int]], seqs: Mapping[str, list[int]]) -> None:
        for name in DIGEST_LENGTHS:
            if not keys[name]:
                continue
            all_keys = np.concatenate([self._keys[name], np.array(keys[name], dtype=np.uint64)])
            all_seqs = np.concatenate([self._seqs[name], np.array(seqs[name], dtype=np.int64)])
            order = np.argsort(all_keys, kind="stable")
            self._keys[name], self._seqs[name] = all_keys[order], all_seqs[order]

    def lookup(self, name: str, value: str) -> list[int]:
        """Seqs of entries whose `name` digest may equal `value` (same 64-bit key)."""
        key = np.uint64(digest_key(name, value))
        keys = self._keys[name]
        start, stop = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
        return self._seqs[name][start:stop].tolist() + self._overlay[name].get(int(key), [])
