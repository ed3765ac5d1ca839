"""The sign-code index (faiss's Hamming kernel + selection) returns exactly what a brute-force scan returns."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.hashlists import fuzzy_index
from modelsieve.hashlists.fuzzy_index import CODE_BYTES, FuzzyIndex

Rows = list[tuple[int, dict[str, bytes]]]


def brute_candidates(rows: Rows, query: dict[str, bytes], limit: int, max_hamming: int) -> list[tuple[int, int]]:
    """Per component: every well-sized row's distance, bit by bit (np.unpackbits), the `limit` closest
    within `max_hamming` by (distance, seq); then each seq's best over the components, closest first."""
    best: dict[int, int] = {}
    for component, code in query.items():
        listed = [(seq, codes[component]) for seq, codes in rows if len(codes.get(component, b"")) == CODE_BYTES]
        if not listed or len(code) != CODE_BYTES:
            continue
        table = np.unpackbits(np.frombuffer(b"".join(c for _, c in listed), np.uint8).reshape(len(listed), CODE_BYTES), axis=1)
        distances = (table != np.unpackbits(np.frombuffer(code, np.uint8))).sum(axis=1).tolist()
        close = sorted((d, seq) for (seq, _), d in zip(listed, distances) if d <= max_hamming)[:limit]
        for distance, seq in close:
            best[seq] = min(distance, best.get(seq, distance))
    return sorted(best.items(), key=lambda pair: (pair[1], pair[0]))[:limit]


def near(rng: np.random.Generator, code: bytes, flips: int) -> bytes:
    bits = np.unpackbits(np.frombuffer(code, np.uint8))
    bits[rng.choice(bits.size, flips, replace=False)] ^= 1
    return np.packbits(bits).tobytes()


def listed_rows(rng: np.random.Generator, query: dict[str, bytes], count: int) -> Rows:
    """Rows near the query at every distance, many at a few shared distances (ties at the cut), exact
    duplicates, unrelated codes, a component the query lacks, wrong-size codes, and seqs out of row
    order with repeats (ties must fall to the lower seq, not the earlier row)."""
    tied = rng.integers(0, 260, 3)
    seqs = rng.permutation(10 * count)[:count]
    rows = []
    for i in range(count):
        codes = {}
        for component, code in query.items():
            draw = rng.random()
            if draw < 0.35:
                codes[component] = near(rng, code, int(rng.choice(tied)))
            elif draw < 0.65:
                codes[component] = near(rng, code, int(rng.integers(0, 300)))
            elif draw < 0.85:
                codes[component] = rng.bytes(CODE_BYTES)
            elif draw < 0.88:
                codes[component] = rng.bytes(int(rng.integers(0, 2 * CODE_BYTES)))  # skipped unless 64 bytes
        if rng.random() < 0.2:
            codes["vae"] = rng.bytes(CODE_BYTES)
        rows.append((int(rng.integers(0, 20)) if rng.random() < 0.1 else int(seqs[i]), codes))
    return rows


def indexed(rows: Rows, batches: int, index: FuzzyIndex | None = None) -> FuzzyIndex:
    index = index if index is not None else FuzzyIndex()
    for part in np.array_split(np.arange(len(rows)), batches):  # growth across several add_many calls
        index.add_many(rows[i] for i in part)
    return index


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 1500),
    grown=st.integers(0, 1500),
    limit=st.integers(1, 40),
    max_hamming=st.integers(-1, 512),
    batches=st.integers(1, 4),
    block_rows=st.sampled_from([1, 7, 64, 1000, fuzzy_index.SCAN_BLOCK_ROWS]),
)
def test_candidates_equal_a_brute_force_scan_before_and_after_a_copy_grows(
    seed: int, count: int, grown: int, limit: int, max_hamming: int, batches: int, block_rows: int
) -> None:
    """Whatever the scan's block size: one row a block, blocks that do and do not divide the table."""
    with patch.object(fuzzy_index, "SCAN_BLOCK_ROWS", block_rows):
        check_candidates(seed, count, grown, limit, max_hamming, batches)


def check_candidates(seed: int, count: int, grown: int, limit: int, max_hamming: int, batches: int) -> None:
    rng = np.random.default_rng(seed)
    query = {"unet": rng.bytes(CODE_BYTES), "text_encoder": rng.bytes(CODE_BYTES)}
    rows = listed_rows(rng, query, count + grown)
    first, later = rows[:count], rows[count:]
    original = indexed(first, batches)
    twin = indexed(later, batches, original.copy())  # within the shared table's capacity or past it
    well_sized = lambda part: sum(len(c) == CODE_BYTES for _, codes in part for c in codes.values())  # noqa: E731
    assert (len(original), len(twin)) == (well_sized(first), well_sized(rows))
    assert original.candidates(query, limit=limit, max_hamming=max_hamming) == brute_candidates(first, query, limit, max_hamming)
    assert twin.candidates(query, limit=limit, max_hamming=max_hamming) == brute_candidates(rows, query, limit, max_hamming)
    assert original.nbytes <= twin.nbytes and twin.nbytes >= len(twin) * (CODE_BYTES + 8)


def test_ties_at_the_cut_go_to_the_lower_seq_whatever_the_row_order() -> None:
    code = bytes(CODE_BYTES)
    index = FuzzyIndex()
    index.add_many([(seq, {"unet": code}) for seq in (50, 7, 30, 9, 41)])
    index.add_many([(3, {"unet": near(np.random.default_rng(0), code, 1)})])
    assert index.candidates({"unet": code}, limit=3) == [(7, 0), (9, 0), (30, 0)]
    assert index.candidates({"unet": code}, limit=6) == [(7, 0), (9, 0), (30, 0), (41, 0), (50, 0), (3, 1)]


def test_wrong_size_codes_and_unknown_components_are_ignored() -> None:
    index = FuzzyIndex()
    index.add_many([(1, {"unet": b"\x00" * 5}), (2, {"unet": b"\x00" * CODE_BYTES})])
    assert len(index) == 1
    assert index.candidates({"unet": b"\x00" * CODE_BYTES, "vae": b"\x00" * CODE_BYTES}) == [(2, 0)]
    assert index.candidates({"unet": b"\x00" * 3}) == []
    assert index.candidates({"unet": b"\x00" * CODE_BYTES}, limit=0) == []


def test_faiss_is_loaded_by_the_first_scan_not_by_importing_the_store_or_matcher() -> None:
    script = (
        "import sys\n"
        "from modelsieve.hashlists.matcher import Matcher\n"
        "from modelsieve.hashlists.fuzzy_index import FuzzyIndex\n"
        "index = FuzzyIndex(); index.add_many([(1, {'unet': bytes(64)})])\n"
        "print('faiss' in sys.modules)\n"
        "index.candidates({'unet': bytes(64)})\n"
        "print('faiss' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.split() == ["False", "True"]
