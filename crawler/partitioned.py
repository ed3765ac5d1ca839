"""A crawl split into partitions by registrable domain and run as Dask tasks, one partition per task.

Every URL of a registrable domain lands in the same partition (a stable hash of the domain), so
one task at a time talks to a host and the per-host limits, delays, robots.txt and Retry-After of
the single-process crawler hold across the whole cluster. The client streams the input once,
spilling each partition's targets to `inputs/part-NNNNN.jsonl` in the output folder (its memory
stays bounded however many URLs; the folder is shared with the workers, which write there too).
Each task reads its partition's input, drops repeated URLs, runs the async crawler over it and
writes `part-NNNNN.jsonl` atomically (temp file + rename); the client records
finished partitions in `manifest.json` (also replaced atomically) and, at the end, concatenates
the parts into `recommendations.jsonl`. A worker killed mid-task costs a retry of that partition
on another worker, never a lost or doubled URL; `resume` skips the partitions already recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from modelsieve.crawler.cluster import ClusterError, snapshot_on_cluster, worker_lookup
from modelsieve.crawler.crawl import CrawlConfig, Crawler
from modelsieve.crawler.inputs import BadLine
from modelsieve.crawler.job import JobError, file_sha256, lock_output
from modelsieve.crawler.model import CrawlTarget
from modelsieve.hashlists.atomic import atomic_write
from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.urls import registrable_domain

MANIFEST = "manifest.json"
LOCK = ".lock"  # held (flock) by the client running the job
INPUTS = "inputs"  # each partition's targets, spilled by the client for its task
SPILL_BUFFER_BYTES = 16 * 1024 * 1024  # input lines the client holds before appending them to the partition files
MERGED = "recommendations.jsonl"
FORMAT = "modelsieve-crawl-job"


def partition_of(url: str, partitions: int) -> int:
    """The partition of a URL: a stable hash of its registrable domain (of the URL itself when it has none)."""
    try:
        domain = registrable_domain(url)
    except InvalidEntryError:
        domain = url
    return int.from_bytes(hashlib.blake2b(domain.encode(), digest_size=8).digest(), "big") % partitions


def part_path(out_dir: Path, partition: int) -> Path:
    """The recommendations file of one partition in `out_dir`."""
    return out_dir / f"part-{partition:05d}.jsonl"


@dataclass(frozen=True)
class PartitionResult:
    """What one partition's task produced."""

    partition: int
    urls: int
    actions: dict[str, int]


def crawl_partition(partition: int, out_dir: str, config: CrawlConfig, lists: str) -> PartitionResult:
    """Dask task: check one partition's targets (its spilled input, each URL once) and write its part file atomically."""
    lookup = worker_lookup(lists)
    actions = Counter[str]()
    targets = read_partition_input(Path(out_dir), partition)

    async def run(handle: BinaryIO) -> None:
        async with Crawler(lookup, config) as crawler:
            async for recommendation in crawler.check_many(targets):
                handle.write(recommendation.to_json_line())
                actions[recommendation.action] += 1

    with atomic_write(part_path(Path(out_dir), partition)) as handle:
        asyncio.run(run(handle))
    return PartitionResult(partition, len(targets), dict(actions))


@dataclass
class JobManifest:
    """The job's identity and the partitions finished so far (`manifest.json`)."""

    input_sha256: str
    partitions: int
    mode: str | None  # the policy's mode; None in manifests written before it was recorded
    completed: dict[int, dict[str, Any]] = field(default_factory=dict)

    def save(self, out_dir: Path) -> None:
        """Write the manifest into `out_dir` atomically (temp file, fsync, rename)."""
        record = {
            "format": FORMAT,
            "input_sha256": self.input_sha256,
            "partitions": self.partitions,
            "mode": self.mode,
            "completed": {str(k): v for k, v in sorted(self.completed.items())},
        }
        with atomic_write(out_dir / MANIFEST) as handle:
            handle.write(json.dumps(record, indent=1).encode())

    @classmethod
    def load(cls, out_dir: Path) -> JobManifest | None:
        """The manifest in `out_dir`; None when there is none, JobError when it is unreadable."""
        path = out_dir / MANIFEST
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_bytes())
            if record.get("format") != FORMAT:
                raise ValueError("not a crawl job manifest")
            completed = {int(k): v for k, v in record["completed"].items()}
            mode = record.get("mode")
            if mode is not None and not isinstance(mode, str):
                raise ValueError("mode is not text")
            return cls(str(record["input_sha256"]), int(record["partitions"]), mode, completed)
        except (ValueError, KeyError, TypeError) as exc:
            raise JobError(f"{path}: unreadable job manifest ({exc})") from None


@dataclass(frozen=True)
class JobSummary:
    """The outcome of a partitioned crawl."""

    out: Path
    urls: int
    partitions: int
    skipped_partitions: int
    actions: dict[str, int]


def partition_input_path(out_dir: Path, partition: int) -> Path:
    """The spilled targets of one partition in `out_dir`."""
    return out_dir / INPUTS / f"part-{partition:05d}.jsonl"


def spill(
    targets: Iterable[CrawlTarget | BadLine],
    partitions: int,
    out_dir: Path,
    on_bad_line: Callable[[BadLine], None],
    *,
    buffer_bytes: int = SPILL_BUFFER_BYTES,
) -> set[int]:
    """Write each partition's targets, in input order, to its input file under `out_dir` (shared
    with the workers); returns the partitions that have any. Bad lines are reported and left out.

    Memory stays within about `buffer_bytes` however long the input: the tasks, not the client,
    hold a partition's targets, and drop repeated URLs there (a URL always lands in one partition).
    """
    folder = out_dir / INPUTS
    shutil.rmtree(folder, ignore_errors=True)  # from an earlier run: rewritten whole
    folder.mkdir(parents=True)
    buffers: dict[int, list[bytes]] = {}
    held = 0
    used: set[int] = set()

    def flush() -> None:
        for partition, lines in buffers.items():
            with open(partition_input_path(out_dir, partition), "ab") as handle:
                handle.writelines(lines)
        buffers.clear()

    for item in targets:
        if isinstance(item, BadLine):
            on_bad_line(item)
            continue
        partition = partition_of(item.url, partitions)
        line = json.dumps({"url": item.url, "context": dict(item.context), "line": item.line}, separators=(",", ":")).encode() + b"\n"
        buffers.setdefault(partition, []).append(line)
        used.add(partition)
        held += len(line)
        if held >= buffer_bytes:
            flush()
            held = 0
    flush()
    return used


def read_partition_input(out_dir: Path, partition: int) -> list[CrawlTarget]:
    """A partition's targets from its spilled input, each URL once (its first line)."""
    targets: dict[str, CrawlTarget] = {}
    with open(partition_input_path(out_dir, partition), "rb") as handle:
        for line in handle:
            record = json.loads(line)
            targets.setdefault(record["url"], CrawlTarget(record["url"], record["context"], record["line"]))
    return list(targets.values())


def run_partitioned_crawl(
    client: Any,
    input_path: Path,
    targets: Iterable[CrawlTarget | BadLine],
    out_dir: Path,
    config: CrawlConfig,
    *,
    store_location: str,
    fingerprint_key: str | None = None,
    partitions: int = 64,
    resume: bool = False,
    on_bad_line: Callable[[BadLine], None] = lambda bad: None,
    on_partition: Callable[[PartitionResult], None] = lambda result: None,
) -> JobSummary:
    """Crawl every target on the cluster behind `client` into `out_dir` (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with lock_output(out_dir / LOCK, create=True, output=out_dir):  # one client per folder: it rewrites inputs/
        input_sha256 = file_sha256(input_path)
        manifest = JobManifest.load(out_dir)
        if manifest is not None and not resume:
            raise JobError(f"{out_dir} holds a crawl job already: add --resume to finish it, or choose another --out")
        if manifest is not None and (manifest.input_sha256, manifest.partitions) != (input_sha256, partitions):
            raise JobError(f"{input_path} (with {partitions} partitions) is not what the crawl in {out_dir} started with")
        mode = config.policy.mode
        if manifest is not None and manifest.mode is not None and manifest.mode != mode:
            raise JobError(f"the crawl in {out_dir} started with --mode {manifest.mode}: resume it with --mode {manifest.mode}")
        manifest = manifest or JobManifest(input_sha256, partitions, mode)
        used = spill(targets, partitions, out_dir, on_bad_line)
        done = {p for p in manifest.completed if part_path(out_dir, p).exists()}
        lists = snapshot_on_cluster(client, store_location, fingerprint_key)
        futures = [
            client.submit(crawl_partition, p, str(out_dir), config, lists, key=f"crawl-{p:05d}-{secrets.token_hex(4)}", pure=False)
            for p in sorted(used)
            if p not in done
        ]
        from distributed import as_completed

        try:
            for future in as_completed(futures):
                result: PartitionResult = future.result()
                manifest.completed[result.partition] = {"urls": result.urls, "actions": result.actions}
                manifest.save(out_dir)
                on_partition(result)
        except Exception as exc:
            if isinstance(exc, JobError):
                raise
            raise ClusterError(f"a crawl partition failed on the cluster: {' '.join(str(exc).split())[:300]}") from None
        finally:
            for future in futures:
                future.cancel()
        merge_parts(out_dir, sorted(used))
        shutil.rmtree(out_dir / INPUTS, ignore_errors=True)
        actions = Counter[str]()
        for partition in used:
            actions.update(manifest.completed[partition]["actions"])
        urls = sum(manifest.completed[partition]["urls"] for partition in used)
        return JobSummary(out_dir / MERGED, urls, len(used), len(done & used), dict(actions))


def merge_parts(out_dir: Path, partitions: Iterable[int]) -> None:
    """Concatenate the part files, in partition order, into `recommendations.jsonl` (atomically)."""
    with atomic_write(out_dir / MERGED) as handle:
        for partition in partitions:
            with open(part_path(out_dir, partition), "rb") as part:
                while chunk := part.read(1 << 20):
                    handle.write(chunk)
