"""Hashlists at scale: ingest, exact lookup and fuzzy top-10 latency with 10⁶ entries, memory.

    nice -n 19 .venv/bin/python bench/lookup.py [--entries 1000000] [--lookups 20000]

Latencies are printed as wall-clock and as the process's CPU time per call (see `percentiles`).
Everything is synthetic (random digests, random LoRA weights) and stays on this machine. Each
figure is printed beside a baseline measured in the same run:
  ingest       Store.add_entries (validation, identity, events, indexes) vs a bare sqlite3
               executemany into a table with one indexed sha256 column;
  exact        Matcher.match_digests (in-memory sorted arrays) vs the store's own SQLite index
               (Store.find_digests) vs a Python set of the hex strings (membership only);
  fuzzy        Matcher.match_fingerprint over 10⁶ index entries (REAL_FINGERPRINTS real LoRA
               fingerprints in the store plus random sign codes standing for unrelated listed
               models), with the recall of strong, medium and weak near-copies of listed LoRAs,
               vs exact compare() against every real fingerprint (what no index costs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from modelsieve.fingerprint.fuzzy import Fingerprint, compare, fingerprint_tensors
from modelsieve.hashlists.fuzzy_index import CODE_BYTES
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import IndexRow, NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.hashlists_fixtures import lora_arrays, lora_fingerprint, merged_lora_arrays  # noqa: E402  (the same generator the tests use)

REAL_FINGERPRINTS = 1_000
PADDING_SEQ = 10**12  # synthetic index rows get seqs no entry has: the scan pays for them, the store never returns them


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sha256_of(i: int) -> str:
    return hashlib.sha256(i.to_bytes(8, "little")).hexdigest()


def percentiles(samples: tuple[list[int], list[int]]) -> str:
    """p50 / p99 / max of wall-clock time, then p50 / p99 of the process's CPU time, in µs.

    On a shared machine a nice'd benchmark is preempted often: wall-clock tails then measure the
    scheduler. CPU time (of every thread of the process) is what each call costs on a core of its own.
    """

    def pick(values: list[int], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    wall, cpu = samples
    return (
        f"wall p50 {pick(wall, 0.5):8.1f} p99 {pick(wall, 0.99):8.1f} max {max(wall) / 1000:8.1f} µs | "
        f"CPU p50 {pick(cpu, 0.5):8.1f} p99 {pick(cpu, 0.99):8.1f} µs"
    )


def timed(call, queries) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
    wall, cpu = [], []
    for query in queries:
        start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
        call(query)
        cpu.append(time.process_time_ns() - start_cpu)
        wall.append(time.perf_counter_ns() - start)
    return wall, cpu


class PaddedStore(SQLiteStore):
    """The store, whose index rows also carry `padding` random sign codes (unrelated listed models)."""

    def __init__(self, path: Path, padding: int) -> None:
        super().__init__(path)
        self._padding = padding

    def index_rows(self, *, changed_since: int = 0, until: int | None = None) -> Iterator[IndexRow]:
        yield from super().index_rows(changed_since=changed_since, until=until)
        if changed_since == 0:
            codes = np.random.default_rng(7).integers(0, 256, (self._padding, CODE_BYTES), dtype=np.uint8)
            for i in range(self._padding):
                yield IndexRow(PADDING_SEQ + i, "active", {}, None, None, {"unet": codes[i].tobytes()})


def bench_ingest(folder: Path, count: int) -> SQLiteStore:
    store = SQLiteStore(folder / "hashes.db")
    store.create_list("bench")
    start, cpu = time.perf_counter(), time.process_time()
    added = store.add_entries("bench", (NewEntry(category="2c", digests={"sha256": sha256_of(i)}) for i in range(count)))
    ours, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    connection = sqlite3.connect(folder / "baseline.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, sha256 TEXT)")
    connection.execute("CREATE INDEX t_sha256 ON t(sha256)")
    start, cpu = time.perf_counter(), time.process_time()
    connection.execute("BEGIN")
    connection.executemany("INSERT INTO t (sha256) VALUES (?)", ((sha256_of(i),) for i in range(count)))
    connection.execute("COMMIT")
    bare, bare_cpu = time.perf_counter() - start, time.process_time() - cpu
    connection.close()
    size = sum(f.stat().st_size for f in folder.glob("hashes.db*")) / 2**20
    print(f"ingest   {added:,} hash-only entries: {ours:6.1f} s wall, {ours_cpu:6.1f} s CPU ({added / ours:,.0f}/s), "
          f"store {size:,.0f} MiB on disk")
    print(f"         bare sqlite3 executemany, one indexed column: {bare:6.1f} s wall, {bare_cpu:6.1f} s CPU "
          f"(ours / bare = {ours / bare:.1f}× wall)")
    return store


def bench_exact(store: SQLiteStore, count: int, lookups: int) -> None:
    before = rss_mib()
    start = time.perf_counter()
    matcher = Matcher(store, refresh_interval=3600)
    load = time.perf_counter() - start
    rss = rss_mib() - before
    rng = np.random.default_rng(1)
    hits = [{"sha256": sha256_of(int(i))} for i in rng.integers(0, count, lookups)]
    misses = [{"sha256": sha256_of(count + int(i))} for i in range(lookups)]
    assert all(len(matcher.match_digests(q)) == 1 for q in hits[:100]) and not matcher.match_digests(misses[0])
    print(f"exact    matcher load {load:5.1f} s; digest index {matcher.index_bytes / 2**20:6.1f} MiB, process RSS +{rss:,.0f} MiB")
    print(f"         match_digests hit   {percentiles(timed(matcher.match_digests, hits))}")
    print(f"         match_digests miss  {percentiles(timed(matcher.match_digests, misses))}")
    sample = lookups // 10
    print(f"         SQLite index hit    {percentiles(timed(store.find_digests, hits[:sample]))}   (baseline)")
    print(f"         SQLite index miss   {percentiles(timed(store.find_digests, misses[:sample]))}   (baseline)")
    before = rss_mib()
    plain = {sha256_of(i) for i in range(count)}
    set_rss = rss_mib() - before
    print(f"         Python set of hex   {percentiles(timed(lambda q: q['sha256'] in plain, hits))}   (membership only, +{set_rss:,.0f} MiB)")


def recall_queries(lookups: int) -> dict[str, list[Fingerprint]]:
    """Queries of listed seed i: strong (fp16 re-save), medium (50/50 merge with an unlisted LoRA),
    weak (30/70 merge, saved in fp16: delta cosine ≈ 0.4)."""
    unlisted = lambda seed: lora_arrays(10**6 + seed)  # noqa: E731
    return {
        "strong (fp16 re-save)": [lora_fingerprint(seed, dtype=np.float16) for seed in range(lookups)],
        "medium (50/50 merge)": [fingerprint_tensors(merged_lora_arrays(lora_arrays(s), unlisted(s), 0.5, 0.5)) for s in range(lookups)],
        "weak (30/70 merge, fp16)": [
            fingerprint_tensors(merged_lora_arrays(lora_arrays(s, dtype=np.float16), unlisted(s), 0.3, 0.7)) for s in range(lookups)
        ],
    }


def bench_fuzzy(folder: Path, padding: int, lookups: int) -> None:
    store = PaddedStore(folder / "fingerprints.db", padding)
    store.create_list("bench")
    fingerprints = [lora_fingerprint(seed) for seed in range(REAL_FINGERPRINTS)]
    store.add_entries("bench", (NewEntry(category="2c", kind="lora", fingerprint=fp.to_bytes()) for fp in fingerprints))
    ids = [entry.id for entry in store.entries("bench")]  # in seq order: ids[seed]
    before = rss_mib()
    matcher = Matcher(store, refresh_interval=3600)
    rss = rss_mib() - before
    # The ceiling: no padding, every real fingerprint within the candidate bound scored. A query it
    # misses scores below the matcher's thresholds against its own listed LoRA: no index finds it.
    uncapped = Matcher(SQLiteStore(folder / "fingerprints.db"), refresh_interval=3600, fuzzy_candidates=REAL_FINGERPRINTS)
    total = REAL_FINGERPRINTS + padding
    print(f"fuzzy    {total:,} index entries ({REAL_FINGERPRINTS:,} real LoRA fingerprints); index +{rss:,.0f} MiB RSS")
    for name, queries in recall_queries(lookups).items():
        matcher.match_fingerprint(queries[0])  # warm-up
        found = [ids[seed] in {m.entry_id for m in matcher.match_fingerprint(q)} for seed, q in enumerate(queries)]
        accepted = [ids[seed] in {m.entry_id for m in uncapped.match_fingerprint(q)} for seed, q in enumerate(queries)]
        samples = timed(matcher.match_fingerprint, queries)
        print(f"         top-10 {name:25s} {percentiles(samples)}   recall {sum(found)}/{lookups}; "
              f"{sum(f and a for f, a in zip(found, accepted))}/{sum(accepted)} of the pairs the thresholds accept")
    brute = timed(lambda q: [compare(q, fp) for fp in fingerprints], [lora_fingerprint(0, dtype=np.float16)] * 3)[1]
    per_pair = statistics.median(brute) / REAL_FINGERPRINTS
    print(f"         no index: compare() with every listed fingerprint {per_pair / 1000:.1f} µs CPU a pair "
          f"→ {per_pair * total / 1e9:,.1f} s a query at {total:,} (extrapolated)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--fuzzy-lookups", type=int, default=100, help="queries of each strength (strong, medium, weak)")
    parser.add_argument("--part", choices=("all", "exact", "fuzzy"), default="all", help="exact: ingest + exact lookups")
    args = parser.parse_args()
    print(f"hashlists bench: {args.entries:,} entries, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"SQLite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(prefix="modelsieve-bench-") as folder:
        if args.part in ("all", "exact"):
            store = bench_ingest(Path(folder), args.entries)
            bench_exact(store, args.entries, args.lookups)
            store.close()
        if args.part in ("all", "fuzzy"):
            bench_fuzzy(Path(folder), args.entries - REAL_FINGERPRINTS, args.fuzzy_lookups)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
