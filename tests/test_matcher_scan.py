"""The blocked, column-major sign-code scan returns exactly what a plain per-row scan returns."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint.fuzzy import hamming_distances
from modelsieve.hashlists import fuzzy_index
from modelsieve.hashlists.fuzzy_index import CODE_BYTES, FuzzyIndex


def reference_candidates(
    rows: list[tuple[int, dict[str, bytes]]], query: dict[str, bytes], limit: int, max_hamming: int
) -> list[tuple[int, int]]:
    """Per component: every row's distance by the facade's row-wise `hamming_distances`, the
    `limit` closest within `max_hamming` by (distance, seq); then each seq's best over components."""
    best: dict[int, int] = {}
    for component, code in query.items():
        listed = [(seq, codes[component]) for seq, codes in rows if component in codes]
        if not listed:
            continue
        table = np.frombuffer(b"".join(c for _, c in listed), np.uint8).reshape(len(listed), CODE_BYTES)
        distances = hamming_distances(code, table).tolist()
        close = sorted((d, seq) for (seq, _), d in zip(listed, distances) if d <= max_hamming)[:limit]
        for distance, seq in close:
            best[seq] = min(distance, best.get(seq, distance))
    return sorted(best.items(), key=lambda pair: (pair[1], pair[0]))[:limit]


def near(rng: np.random.Generator, code: bytes, flips: int) -> bytes:
    bits = np.unpackbits(np.frombuffer(code, np.uint8))
    bits[rng.choice(bits.size, flips, replace=False)] ^= 1
    return np.packbits(bits).tobytes()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 300),
    limit=st.integers(1, 40),
    max_hamming=st.integers(0, 512),
    batches=st.integers(1, 4),
)
def test_blocked_scan_equals_the_reference_scan(seed: int, count: int, limit: int, max_hamming: int, batches: int) -> None:
    rng = np.random.default_rng(seed)
    query = {"unet": rng.bytes(CODE_BYTES), "text_encoder": rng.bytes(CODE_BYTES)}
    rows = []
    for i in range(count):
        codes = {}
        for component, code in query.items():
            if rng.random() < 0.8:  # near copies at every distance, some exact duplicates (ties)
                codes[component] = near(rng, code, int(rng.integers(0, 300))) if rng.random() < 0.7 else rng.bytes(CODE_BYTES)
        rows.append((int(rng.integers(0, 50)) if rng.random() < 0.1 else 1000 + i, codes))  # some seqs repeat
    index = FuzzyIndex()
    for part in np.array_split(np.arange(count), batches):  # growth across several add_many calls
        index.add_many(rows[i] for i in part)
    assert len(index) == sum(len(codes) for _, codes in rows)
    assert index.candidates(query, limit=limit, max_hamming=max_hamming) == reference_candidates(rows, query, limit, max_hamming)


def test_scan_crosses_block_boundaries(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(fuzzy_index, "SCAN_ROWS", 7)  # many blocks and a ragged last one
    rng = np.random.default_rng(3)
    query = {"unet": rng.bytes(CODE_BYTES)}
    rows = [(i, {"unet": near(rng, query["unet"], int(rng.integers(0, 260)))}) for i in range(200)]
    index = FuzzyIndex()
    index.add_many(rows)
    found = index.candidates(query, limit=25, max_hamming=226)
    assert found == reference_candidates(rows, query, 25, 226)
    assert len(found) == 25 and found[0][1] < found[-1][1]


def test_wrong_size_codes_and_unknown_components_are_ignored() -> None:
    index = FuzzyIndex()
    index.add_many([(1, {"unet": b"\x00" * 5}), (2, {"unet": b"\x00" * CODE_BYTES})])
    assert len(index) == 1
    assert index.candidates({"unet": b"\x00" * CODE_BYTES, "vae": b"\x00" * CODE_BYTES}) == [(2, 0)]
    assert index.candidates({"unet": b"\x00" * 3}) == []
    assert index.candidates({"unet": b"\x00" * CODE_BYTES}, limit=0) == []
