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

import sqlite_utils

from modelsieve.crawler.crawl import Crawler
from modelsieve.crawler.fetch import utc_now
from modelsieve.crawler.inputs import BadLine
from modelsieve.crawler.model import CrawlTarget, Recommendation
from modelsieve.fingerprint.errors import ModelsieveError

JOBS = "crawl_jobs"
TARGETS = "crawl_targets"
COMMIT_EVERY = 256  # recommendations per batch at most
COMMIT_SECONDS = 0.5  # and at least this often
_PAGE = 1000


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


def _ensure_schema(db: sqlite_utils.Database) -> None:
    with db.conn:
        db.execute(
            f"""CREATE TABLE IF NOT EXISTS {JOBS} (
                id INTEGER PRIMARY KEY,
                out_path TEXT NOT NULL UNIQUE,
                input_sha256 TEXT NOT NULL,
                created_at TEXT NOT NULL,
                finished_at TEXT,
                out_offset INTEGER NOT NULL DEFAULT 0)"""
        )
        db.execute(
            f"""CREATE TABLE IF NOT EXISTS {TARGETS} (
                job_id INTEGER NOT NULL REFERENCES {JOBS}(id) ON DELETE CASCADE,
                line INTEGER NOT NULL,
                url TEXT NOT NULL,
                context TEXT NOT NULL,
                done INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (job_id, line),
                UNIQUE (job_id, url))"""
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class CrawlJob:
    """One resumable crawl into one output file; create with `CrawlJob.open`."""

    def __init__(self, db: sqlite_utils.Database, job_id: int, out_path: Path) -> None:
        self.db = db
        self.job_id = job_id
        self.out_path = out_path
        self._out = None
        self._unmarked: list[str] = []
        self._last_commit = time.monotonic()

    @classmethod
    def open(
        cls,
        db: sqlite_utils.Database,
        out_path: Path,
        input_path: Path,
        targets: Callable[[], Iterable[CrawlTarget | BadLine]],
        *,
        resume: bool,
        on_bad_line: Callable[[BadLine], None] = lambda bad: None,
        on_duplicate: Callable[[CrawlTarget], None] = lambda target: None,
    ) -> CrawlJob:
        """The job writing to `out_path`: resumed (with `resume`) or created from `targets()`."""
        _ensure_schema(db)
        out_path = out_path.resolve()
        input_sha256 = file_sha256(input_path)
        row = db.execute(f"SELECT id, input_sha256 FROM {JOBS} WHERE out_path = ?", [str(out_path)]).fetchone()
        if row is not None:
            if not resume:
                raise JobError(f"a crawl into {out_path} is already in the store: add --resume to finish it, or choose another --out")
            if row[1] != input_sha256:
                raise JobError(f"{input_path} is not the input the crawl into {out_path} started with")
            job = cls(db, row[0], out_path)
            job._reconcile()
            return job
        if out_path.exists() and out_path.stat().st_size:
            raise JobError(f"{out_path} exists and no crawl into it is in the store: remove it or choose another --out")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(b"")  # before the job exists: a job in the store always has its output
        with db.conn:
            cursor = db.execute(
                f"INSERT INTO {JOBS} (out_path, input_sha256, created_at) VALUES (?, ?, ?)",
                [str(out_path), input_sha256, utc_now()],
            )
            job_id = cursor.lastrowid
            assert job_id is not None
            for item in targets():
                if isinstance(item, BadLine):
                    on_bad_line(item)
                    continue
                inserted = db.conn.execute(
                    f"INSERT OR IGNORE INTO {TARGETS} (job_id, line, url, context) VALUES (?, ?, ?, ?)",
                    [job_id, item.line, item.url, json.dumps(item.context)],
                )
                if inserted.rowcount == 0:  # the same URL on an earlier line: checked once
                    on_duplicate(item)
        return cls(db, job_id, out_path)

    def progress(self) -> JobProgress:
        total, done = self.db.execute(
            f"SELECT count(*), coalesce(sum(done), 0) FROM {TARGETS} WHERE job_id = ?", [self.job_id]
        ).fetchone()
        return JobProgress(total, done)

    def pending(self) -> Iterator[CrawlTarget]:
        """Targets not yet done, in input order (read page by page, so marks may land meanwhile)."""
        after = 0
        while True:
            rows = self.db.execute(
                f"SELECT line, url, context FROM {TARGETS} WHERE job_id = ? AND done = 0 AND line > ? ORDER BY line LIMIT ?",
                [self.job_id, after, _PAGE],
            ).fetchall()
            if not rows:
                return
            for line, url, context in rows:
                yield CrawlTarget(url, json.loads(context), line)
            after = rows[-1][0]

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
            with self.db.conn:
                self.db.execute(f"UPDATE {JOBS} SET finished_at = ? WHERE id = ?", [utc_now(), self.job_id])
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
        self._mark_done(self._unmarked, self._out.tell())
        self._unmarked = []

    def _mark_done(self, urls: list[str], offset: int) -> None:
        with self.db.conn:
            self.db.conn.executemany(
                f"UPDATE {TARGETS} SET done = 1 WHERE job_id = ? AND url = ?", [(self.job_id, url) for url in urls]
            )
            self.db.execute(f"UPDATE {JOBS} SET out_offset = ? WHERE id = ?", [offset, self.job_id])

    def _reconcile(self) -> None:
        """Cut a torn last line and mark the URLs written after the last commit as done."""
        (recorded,) = self.db.execute(f"SELECT out_offset FROM {JOBS} WHERE id = ?", [self.job_id]).fetchone()
        if not self.out_path.exists():
            raise JobError(f"{self.out_path} is gone: the crawl into it cannot be resumed")
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
        self._mark_done(urls, recorded + len(complete))

