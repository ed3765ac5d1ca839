"""Crawl jobs submitted over the API: kept in the store, run in the background by any server process.

A job is a row here plus the crawler's resumable job (`crawler.job.CrawlJob`: targets and
progress in the store, recommendations appended to a JSON Lines file in the job's folder). A
server process runs a job while it holds the job's lease, renewing it as it goes; when a process
dies, the lease lapses and any other process (or the same server restarted) resumes the job where
the crawler's own bookkeeping says it stopped. So requests stay stateless: any process answers
`GET /v1/crawl/{id}` from the store and the output file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from modelsieve.api.http.config import ApiConfig
from modelsieve.api.http.errors import log
from modelsieve.api.http.metrics import Metrics
from modelsieve.api.http.offload import LoopThread
from modelsieve.crawler.crawl import CrawlConfig, Crawler, Lookup
from modelsieve.crawler.inputs import read_targets
from modelsieve.crawler.job import CrawlJob, JobError, OutputLockedError
from modelsieve.crawler.model import Recommendation
from modelsieve.hashlists.errors import StoreUnavailableError
from modelsieve.hashlists.model import LeasedCrawlJob
from modelsieve.hashlists.store import Store

LEASE_SECONDS = 30.0
RENEW_SECONDS = 10.0
POLL_SECONDS = 2.0
PAGE_BYTES_LIMIT = 8 * 1024 * 1024


class JobStoppedError(JobError):
    """A submission stopped before its commit because its request was already answered."""


class TooManyJobsError(JobError):
    """A key already has as many queued or running jobs as it may."""


class CrawlJobs:
    """The jobs in the store and their folders under `root` (one folder a job: input and output)."""

    def __init__(self, store: Store, root: Path, *, renew_seconds: float = RENEW_SECONDS) -> None:
        self.store = store
        self.root = root
        self.renew_seconds = renew_seconds
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def _crawl_job(self, record: LeasedCrawlJob) -> CrawlJob:
        return CrawlJob(self.store, record.crawl_job_id, (self.folder(record.id) / "recommendations.jsonl").resolve())

    def submit(
        self, key_id: str, targets: Sequence[Mapping[str, Any]], mode: str, *,
        max_unfinished: int = ApiConfig.crawl_jobs_per_key, stopped: Callable[[], bool] = lambda: False,
    ) -> LeasedCrawlJob:
        """Store a new job (it and its targets in one transaction); a server process picks it up.

        TooManyJobsError when `key_id` already has `max_unfinished` jobs queued or running.
        `stopped` is asked last before the commit: once it says True (the request timed out and
        was answered 503 while this waited for the store), nothing is stored and JobStoppedError
        is raised, so the client's retry does not crawl every URL twice."""
        job_id = secrets.token_hex(8)
        folder = self.folder(job_id)
        folder.mkdir(parents=True)
        try:
            input_path = folder / "input.jsonl"
            input_path.write_text("".join(json.dumps(dict(t), separators=(",", ":")) + "\n" for t in targets), encoding="utf-8")
            lines = input_path.read_text(encoding="utf-8").splitlines()
            with self.store.transaction():
                unfinished = self.store.unfinished_crawl_jobs(key_id)
                if unfinished >= max_unfinished:
                    raise TooManyJobsError(
                        f"this key has {unfinished} crawl jobs queued or running, its limit: wait for one to end or cancel one"
                    )
                crawl_job = CrawlJob.open(
                    self.store, folder / "recommendations.jsonl", input_path, lambda: read_targets(lines), resume=False, mode=mode
                )
                crawl_job.close()  # a server process runs it later (`run` opens it again)
                record = LeasedCrawlJob(job_id, key_id, mode, time.time(), crawl_job.job_id)
                self.store.add_leased_crawl_job(record)
                if stopped():
                    raise JobStoppedError("the crawl submission was stopped before it committed (its request timed out): nothing stored")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return record

    def get(self, job_id: str) -> LeasedCrawlJob | None:
        """The job with this id, or None."""
        return self.store.leased_crawl_job(job_id)

    def recent(self, key_id: str | None, *, before: tuple[float, str] | None, limit: int) -> list[LeasedCrawlJob]:
        """Up to `limit` jobs of `key_id` (every key's with None), newest first, older than `before`."""
        return self.store.leased_crawl_jobs(key_id, before=before, limit=limit)

    def cancel(self, job_id: str) -> bool:
        """Finish a queued or running job as cancelled; False when it had already finished.

        A process running it stops when it next renews its lease (within `renew_seconds`); the
        recommendations written until then stay readable."""
        return self.store.cancel_crawl_job(job_id, time.time())

    def claim(self) -> LeasedCrawlJob | None:
        """Take the lease of one unfinished job nobody holds (atomically, across processes)."""
        now = time.time()
        return self.store.claim_crawl_job(self.owner, now, now + LEASE_SECONDS)

    def renew(self, job_id: str) -> bool:
        """Extend this process's lease; False when it was lost (another process took the job)."""
        return self.store.renew_crawl_lease(job_id, self.owner, time.time() + LEASE_SECONDS)

    def finish(self, job_id: str, error: str | None = None) -> None:
        """Mark a job finished (failed when `error` is given) and end this process's lease."""
        self.store.end_crawl_lease(job_id, self.owner, finished_at=time.time(), error=error)

    def release(self, job_id: str) -> None:
        """Give the lease back (shutdown): another process may resume the job at once."""
        self.store.end_crawl_lease(job_id, self.owner, finished_at=None)

    def progress(self, record: LeasedCrawlJob) -> tuple[int, int]:
        """(total URLs, URLs done)."""
        progress = self._crawl_job(record).progress()
        return progress.total, progress.done

    def page(self, record: LeasedCrawlJob, cursor: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to `limit` recommendations from byte `cursor` of the output, and the cursor after them.

        Only complete lines are read (the crawler appends each in one write). ValueError for a
        cursor that is not the start of a line of the output.
        """
        path = self._crawl_job(record).out_path
        with open(path, "rb") as handle:
            if cursor:
                handle.seek(cursor - 1)
                if handle.read(1) != b"\n":
                    raise ValueError("the cursor does not point at the start of a recommendation")
            block = handle.read(PAGE_BYTES_LIMIT)
        records: list[Any] = []
        used = 0
        for line in _complete_lines(block):
            if len(records) == limit:
                break
            records.append(json.loads(line))
            used += len(line)
        return records, cursor + used

    def _targets(self, record: LeasedCrawlJob) -> Callable[[], Iterator[Any]]:
        lines = (self.folder(record.id) / "input.jsonl").read_text(encoding="utf-8").splitlines()
        return lambda: read_targets(lines)

    async def run(self, record: LeasedCrawlJob, config: CrawlConfig, lookup: Lookup, on_result: Callable[[Recommendation], None]) -> None:
        """Run (or resume) a leased job to its end, renewing the lease meanwhile."""
        folder = self.folder(record.id)
        try:
            job = CrawlJob.open(
                self.store, folder / "recommendations.jsonl", folder / "input.jsonl", self._targets(record), resume=True, mode=record.mode
            )
        except OutputLockedError as exc:
            # another process still runs it (its lease lapsed, e.g. while the store was busy): leave
            # this lease to lapse too, and whoever claims the job after that one ends resumes it
            log.warning("crawl job %s not started here: %s", record.id, exc)
            return
        except (JobError, OSError) as exc:  # its input or output is gone or unreadable: it can never run
            self.finish(record.id, f"{type(exc).__name__}: {exc}")
            return
        crawl = asyncio.create_task(self._crawl(job, config, lookup, on_result))
        renewer = asyncio.create_task(self._keep_lease(record.id))
        try:
            await asyncio.wait((crawl, renewer), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # this process shuts down: another one resumes the job
            await _stopped(crawl, renewer)
            self.release(record.id)
            raise
        if not crawl.done():  # cancelled, or another process holds the job now: the store says how it ends
            await _stopped(crawl)
            if (problem := renewer.exception()) is not None:
                log.warning("crawl job %s stopped here: its lease could not be renewed: %s", record.id, problem)
            else:
                log.info("crawl job %s stopped here: it was cancelled or its lease was lost", record.id)
            return
        await _stopped(renewer)
        failure = crawl.exception()
        # a failure ends the job as failed, with its one-line reason; the server goes on
        self.finish(record.id, None if failure is None else f"{type(failure).__name__}: {failure}")

    @staticmethod
    async def _crawl(job: CrawlJob, config: CrawlConfig, lookup: Lookup, on_result: Callable[[Recommendation], None]) -> None:
        async with Crawler(lookup, config) as crawler:
            await job.run(crawler, on_result)

    async def _keep_lease(self, job_id: str) -> None:
        """Renew the lease every `renew_seconds`; return once it is lost (taken over, or the job cancelled)."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if not self.renew(job_id):
                    return
            except StoreUnavailableError as exc:  # keep crawling: the lease may still be renewed in time
                log.warning("crawl job %s: lease not renewed this time: %s", job_id, exc)


async def _stopped(*tasks: asyncio.Task[None]) -> None:
    """Cancel `tasks` and wait until they have ended (their own clean-up included)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _complete_lines(block: bytes) -> Iterator[bytes]:
    start = 0
    while (end := block.find(b"\n", start)) != -1:
        yield block[start : end + 1]
        start = end + 1


class JobRunner:
    """Runs leased jobs in this process, at most `slots` at once; `wake()` after a submission.

    `crawl_config(mode)` gives the crawler's configuration for a job's mode (search or host).
    Jobs are claimed on the caller's loop and run on `crawl_loop` (a thread of their own), so the
    crawler's work never holds up the requests the caller's loop serves.
    """

    def __init__(
        self,
        jobs: CrawlJobs,
        crawl_config: Callable[[str], CrawlConfig],
        metrics: Metrics,
        crawl_loop: LoopThread,
        slots: int = 2,
    ) -> None:
        self.jobs, self.crawl_config, self.metrics, self.crawl_loop = jobs, crawl_config, metrics, crawl_loop
        self._slots = asyncio.Semaphore(slots)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for claimable jobs now instead of at the next poll (a job was just submitted)."""
        self._wake.set()

    async def run_forever(self, lookup: Lookup) -> None:
        """Claim and start jobs while slots are free; look again on wake-up or every few seconds."""
        try:
            while True:
                await self._slots.acquire()
                record = await self._claim()
                if record is None:
                    self._slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
                    self._wake.clear()
                    continue
                task = asyncio.create_task(self._run(record, lookup))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _claim(self) -> LeasedCrawlJob | None:
        """A job to run, or None. The claim is a store write, so it waits (on a thread, never on
        the loop that answers requests) while another write such as a bundle import holds the store."""
        try:
            return await asyncio.to_thread(self.jobs.claim)
        except StoreUnavailableError as exc:
            log.warning("crawl jobs: none claimed this time: %s", exc)
            return None
        except Exception:  # anything else unexpected: logged, and claims go on (a dead runner would run no job again)
            log.exception("crawl jobs: none claimed this time")
            return None

    async def _run(self, record: LeasedCrawlJob, lookup: Lookup) -> None:
        self.metrics.crawl_jobs.inc()
        try:
            await self.crawl_loop.run(self.jobs.run(record, self.crawl_config(record.mode), lookup, self._count))
        finally:
            self.metrics.crawl_jobs.dec()
            self._slots.release()

    def _count(self, recommendation: Recommendation) -> None:
        self.metrics.crawl_urls.labels(recommendation.action).inc()
