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


@dataclass(frozen=True)
class JobProgress:
    """How far a job is."""

    total: int
    done: int

    @property
    def pending(self) -> int:
        return self.total - self.done


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class CrawlJob:
    """One resumable crawl into one output file; create with `CrawlJob.open`."""

    def __init__(self, store: Store, job_id: int, out_path: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.out_path = out_path
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
        on_bad_line: Callable[[BadLine], None] = lambda bad: None,
        on_duplicate: Callable[[CrawlTarget], None] = lambda target: None,
    ) -> CrawlJob:
        """The job writing to `out_path`: resumed (with `resume`) or created from `targets()`."""
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
            job = cls(store, existing.id, out_path)
            job._reconcile()
            return job
        if out_path.exists() and out_path.stat().st_size:
            raise JobError(f"{out_path} exists and no crawl into it is in the store: remove it or choose another --out")
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_bytes(b"")  # before the job exists: a job in the store always has its output
        except OSError as exc:
            raise JobError(f"cannot write {out_path}: {exc.strerror}") from None
        with store.transaction():
            job_id = store.create_crawl_job(str(out_path), input_sha256)
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
        return cls(store, job_id, out_path)

    def progress(self) -> JobProgress:
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
        with open(self.out_path, "ab", buffering=0) as out:
            self._out = out
            try:
                async for recommendation in crawler.check_many(self.pending()):
                    self._write(recommendation)
                    on_result(recommendation)
            finally:
                self._commit()
                self._out = None
        progress = self.progress()
        if progress.pending == 0:
            self.store.finish_crawl_job(self.job_id)
        return progress

    def _write(self, recommendation: Recommendation) -> None:
        assert self._out is not None
        line = json.dumps(recommendation.to_json(), separators=(",", ":"), ensure_ascii=False) + "\n"
        self._out.write(line.encode("utf-8"))  # unbuffered: one write, straight to the OS
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
        if not self.out_path.exists():
            raise JobError(f"{self.out_path} is gone: the crawl into it cannot be resumed; choose another --out")
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
