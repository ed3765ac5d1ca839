"""Resumable crawl jobs: targets and progress in the store, recommendations in a JSON Lines file.

A job is keyed by its output file. Creating it stores every (deduplicated) target in one
transaction before the output exists. While it runs, each recommendation is appended to the
output with one write; every batch, the output is fsynced and then, in one transaction, the
batch's URLs are marked done together with the output's length at that point. A kill can
therefore leave (a) URLs checked but not yet written — still pending, checked again — or
(b) lines written past the recorded length whose URLs are not marked done: resuming cuts a torn
last line, marks the URLs of the complete lines after the recorded length as done, and carries
on. Every URL ends in the output exactly once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelsieve.crawler.crawl import Crawler
from modelsieve.crawler.inputs import BadLine
from modelsieve.crawler.model import CrawlTarget, Recommendation
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.model import CrawlTargetRow
from modelsieve.hashlists.store import Store

COMMIT_EVERY = 256  # recommendations per batch at most
COMMIT_SECONDS = 0.5  # and at least this often
_PAGE = 1000  # targets read, or added, per query


class JobError(ModelsieveError):
    """A crawl job cannot be created or resumed as asked."""


class OutputLockedError(JobError):
    """Another crawl is writing the output right now; it may be resumed once that one ends."""


@dataclass(frozen=True)
class JobProgress:
    """How far a job is."""

    total: int
    done: int

    @property
    def pending(self) -> int:
        return self.total - self.done


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read 1 MiB at a time (ties a crawl job to its input for --resume)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def lock_output(path: Path, *, create: bool, output: Path | None = None) -> BinaryIO:
    """`path` (the output, or a lock file in an output folder: `output`), opened and exclusively
    locked (flock) so that no second crawl writes the output at once.

    The lock lasts until the returned file is closed (or the process ends, however it ends).
    """
    try:
        handle = open(path, "ab" if create else "r+b")  # noqa: SIM115 - held for the job's lifetime
    except FileNotFoundError:
        raise JobError(f"{path} is gone: the crawl into it cannot be resumed; choose another --out") from None
    except OSError as exc:
        raise JobError(f"cannot write {path}: {exc.strerror}") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputLockedError(f"another crawl is writing {output or path} right now: let it finish, or choose another --out") from None
    return handle


class CrawlJob:
    """One resumable crawl into one output file; create with `CrawlJob.open`.

    A job from `open` holds its output locked until `run` ends or `close` is called.
    """

    def __init__(self, store: Store, job_id: int, out_path: Path, lock: BinaryIO | None = None) -> None:
        self.store = store
        self.job_id = job_id
        self.out_path = out_path
        self._lock = lock
        self._out: BinaryIO | None = None
        self._unmarked: list[str] = []
        self._last_commit = time.monotonic()

    @classmethod
    def open(
        cls,
        store: Store,
        out_path: Path,
        input_path: Path,
        targets: Callable[[], Iterable[CrawlTarget | BadLine]],
        *,
        resume: bool,
        mode: str | None = None,
        on_bad_line: Callable[[BadLine], None] = lambda bad: None,
        on_duplicate: Callable[[CrawlTarget], None] = lambda target: None,
    ) -> CrawlJob:
        """The job writing to `out_path`: resumed (with `resume`) or created from `targets()`.

        `mode` (the policy's search or host) is recorded when the job is created; resuming it in
        another mode is refused, so one output never mixes delist and takedown recommendations."""
        out_path = out_path.resolve()
        input_sha256 = file_sha256(input_path)
        existing = store.find_crawl_job(str(out_path))
        if existing is not None:
            if not resume:
                if not out_path.exists():  # --resume cannot help either: say the one way on
                    raise JobError(f"a crawl into {out_path} is in the store, but its output is gone: choose another --out")
                raise JobError(f"a crawl into {out_path} is already in the store: add --resume to finish it, or choose another --out")
            if existing.input_sha256 != input_sha256:
                raise JobError(f"{input_path} is not the input the crawl into {out_path} started with")
            if existing.mode is not None and mode is not None and existing.mode != mode:
                raise JobError(f"the crawl into {out_path} started with --mode {existing.mode}: resume it with --mode {existing.mode}")
            job = cls(store, existing.id, out_path, lock_output(out_path, create=False))
            try:
                job._reconcile()
            except BaseException:
                job.close()
                raise
            return job
        if out_path.exists() and out_path.stat().st_size:
            raise JobError(f"{out_path} exists and no crawl into it is in the store: remove it or choose another --out")
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(f"cannot write {out_path}: {exc.strerror}") from None
        lock = lock_output(out_path, create=True)  # before the job exists: a job in the store always has its output
        try:
            if os.fstat(lock.fileno()).st_size:  # another crawl began writing it since the check above
                raise JobError(f"{out_path} exists and no crawl into it is in the store: remove it or choose another --out")
            job_id = cls._create(store, out_path, input_sha256, mode, targets, on_bad_line, on_duplicate)
        except BaseException:
            lock.close()
            raise
        return cls(store, job_id, out_path, lock)

    @staticmethod
    def _create(
        store: Store,
        out_path: Path,
        input_sha256: str,
        mode: str | None,
        targets: Callable[[], Iterable[CrawlTarget | BadLine]],
        on_bad_line: Callable[[BadLine], None],
        on_duplicate: Callable[[CrawlTarget], None],
    ) -> int:
        """Store the job and every target in one transaction; its id."""
        with store.transaction():
            job_id = store.create_crawl_job(str(out_path), input_sha256, mode)
            batch: list[CrawlTarget] = []

            def add(batch: list[CrawlTarget]) -> None:
                rows = []
                for t in batch:
                    assert t.line is not None, "a job's targets are read from its input file, each with its line"
                    rows.append(CrawlTargetRow(t.line, t.url, json.dumps(t.context)))
                skipped = store.add_crawl_targets(job_id, rows)
                for target in batch:
                    if target.line in skipped:  # the same URL on an earlier line: checked once
                        on_duplicate(target)

            for item in targets():
                if isinstance(item, BadLine):
                    on_bad_line(item)
                    continue
                batch.append(item)
                if len(batch) >= _PAGE:
                    add(batch)
                    batch = []
            add(batch)
        return job_id

    def close(self) -> None:
        """Release the output's lock (idempotent); `run` does so when it ends."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def progress(self) -> JobProgress:
        """Targets done and in total, as the store has them."""
        return JobProgress(*self.store.crawl_progress(self.job_id))

    def pending(self) -> Iterator[CrawlTarget]:
        """Targets not yet done, in input order (read page by page, so marks may land meanwhile)."""
        after = 0
        while rows := self.store.pending_crawl_targets(self.job_id, after_line=after, limit=_PAGE):
            for row in rows:
                yield CrawlTarget(row.url, json.loads(row.context), row.line)
            after = rows[-1].line

    async def run(self, crawler: Crawler, on_result: Callable[[Recommendation], None] = lambda r: None) -> JobProgress:
        """Check every pending target, appending each recommendation once; returns the final progress."""
        try:
            with open(self.out_path, "ab", buffering=0) as out:
                self._out = out
                try:
                    async for recommendation in crawler.check_many(self.pending()):
                        self._write(recommendation)
                        on_result(recommendation)
                finally:
                    self._commit()
                    self._out = None
        finally:
            self.close()
        progress = self.progress()
        if progress.pending == 0:
            self.store.finish_crawl_job(self.job_id)
        return progress

    def _write(self, recommendation: Recommendation) -> None:
        assert self._out is not None
        self._out.write(recommendation.to_json_line())  # unbuffered: one write, straight to the OS
        self._unmarked.append(recommendation.url)
        if len(self._unmarked) >= COMMIT_EVERY or time.monotonic() - self._last_commit >= COMMIT_SECONDS:
            self._commit()

    def _commit(self) -> None:
        """Make the written lines durable, then mark their URLs done with the output length."""
        self._last_commit = time.monotonic()
        if not self._unmarked or self._out is None:
            return
        os.fsync(self._out.fileno())
        self.store.mark_crawl_targets_done(self.job_id, self._unmarked, self._out.tell())
        self._unmarked = []

    def _reconcile(self) -> None:
        """Cut a torn last line and mark the URLs written after the last commit as done."""
        recorded = self.store.crawl_job(self.job_id).out_offset
        with open(self.out_path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < recorded:
                raise JobError(f"{self.out_path} is shorter than the crawl recorded ({size} < {recorded} bytes)")
            handle.seek(recorded)
            tail = handle.read()
            complete = tail[: tail.rfind(b"\n") + 1]
            handle.truncate(recorded + len(complete))
            handle.flush()
            os.fsync(handle.fileno())
        urls = []
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                urls.append(json.loads(line)["url"])
            except (ValueError, KeyError, TypeError):
                raise JobError(f"{self.out_path}: unreadable line {number} after byte {recorded}") from None
        self.store.mark_crawl_targets_done(self.job_id, urls, recorded + len(complete))
