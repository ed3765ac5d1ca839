"""The application factory: `create_app(config)` builds one API server's aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from aiohttp import web

from modelsieve.api.http.audit import AuditLog
from modelsieve.api.http.auth import CachedKeys, KeyStore
from modelsieve.api.http.config import ApiConfig
from modelsieve.api.http.errors import error_middleware
from modelsieve.api.http.metrics import Metrics
from modelsieve.api.http.offload import LoopThread, cpu_threads, off_loop
from modelsieve.api.http.openapi import openapi_document
from modelsieve.api.http.ratelimit import RateLimiter
from modelsieve.api.http.routes import ROUTES
from modelsieve.api.http.routing import add_routes
from modelsieve.api.http.serving import IN_FLIGHT, InFlight
from modelsieve.api.http.state import (
    AUDIT,
    CONFIG,
    CPU_POOL,
    CRAWL_JOBS,
    CRAWL_LOOP,
    JOB_RUNNER,
    KEYS,
    LIMITER,
    MATCH_INDEX,
    METRICS,
    OPENAPI,
    PUBLISHER_KEY,
    READINESS_CHECKS,
    STORE,
    UPLOAD_SLOTS,
    MatchIndex,
)
from modelsieve.api.http.crawljobs import CrawlJobs, JobRunner
from modelsieve.crawler.crawl import CrawlConfig
from modelsieve.crawler.lookup import StoreLookup
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.policy import Mode, PolicyConfig
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import load_key
from modelsieve.hashlists.db import DB_ENV, default_db_path, user_data_dir
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.signing import load_private_key
from modelsieve.hashlists.store import is_postgres_location, open_store

log = logging.getLogger("modelsieve.api")


def create_app(config: ApiConfig | None = None) -> web.Application:
    """An application serving the store at `config.db_path`; opened on start-up, closed on cleanup."""
    config = config or ApiConfig()
    metrics = Metrics()
    in_flight = InFlight()
    app = web.Application(middlewares=[in_flight.middleware(), metrics.middleware(), error_middleware], client_max_size=config.json_body_limit)
    app[IN_FLIGHT] = in_flight
    app[CONFIG] = config
    app[METRICS] = metrics
    app[LIMITER] = RateLimiter(config.rate_per_second, config.rate_burst)
    app[READINESS_CHECKS] = {}
    app[OPENAPI] = openapi_document(ROUTES)
    app[UPLOAD_SLOTS] = asyncio.Semaphore(config.concurrent_uploads)
    app[MATCH_INDEX] = MatchIndex()
    # cleaned up in reverse: jobs stopped, index loading stopped, CPU work finished, then the store closed
    app.cleanup_ctx.extend([_audit, _store, _cpu_pool, _match_index, _crawl_jobs])
    add_routes(app, ROUTES)
    return app


async def _cpu_pool(app: web.Application) -> AsyncIterator[None]:
    """The bounded thread pool CPU-bound work runs on (`offload.off_loop`), for the process's lifetime."""
    app[CPU_POOL] = ThreadPoolExecutor(cpu_threads(), thread_name_prefix="modelsieve-cpu")
    try:
        yield
    finally:
        app[CPU_POOL].shutdown(wait=True, cancel_futures=True)


async def _audit(app: web.Application) -> AsyncIterator[None]:
    """The audit log, open for the process's lifetime; its last lines are written at shutdown."""
    app[AUDIT] = AuditLog(app[CONFIG].audit_log)
    try:
        yield
    finally:
        app[AUDIT].close()


async def _store(app: web.Application) -> AsyncIterator[None]:
    """Open the store, the API key table and the bundle signing key for this process's lifetime."""
    config = app[CONFIG]
    app[PUBLISHER_KEY] = load_private_key(config.publisher_key_path) if config.publisher_key_path else None
    store = open_store(config.db_path)
    app[STORE] = store
    app[KEYS] = CachedKeys(KeyStore(store), config.key_cache_seconds)
    app[READINESS_CHECKS]["store"] = lambda app: "ok"
    try:
        yield
    finally:
        app[READINESS_CHECKS].pop("store", None)
        store.close()


async def _match_index(app: web.Application) -> AsyncIterator[None]:
    """Load the matcher's index in the background (a large store takes a while): until it is
    loaded, readiness says "loading" and match routes answer 503 with Retry-After. Then follow
    the store's changes every `index_refresh_seconds`, on the CPU pool: requests never refresh
    the index themselves (after a big import that takes seconds) and keep using the current one
    until the next is built."""
    index = app[MATCH_INDEX]
    config = app[CONFIG]
    app[READINESS_CHECKS]["index"] = lambda app: index.readiness(time.monotonic(), config.index_stale_seconds)

    key = load_key(config.fingerprint_key_path)  # a wrong key file stops the start-up with one line

    async def load() -> None:
        try:
            index.matcher = await off_loop(app, Matcher.for_store, app[STORE], key, refresh_interval=math.inf)
            index.status, index.refreshed_at = "ok", time.monotonic()
        except Exception as exc:
            log.exception("cannot load the match index")
            # the reason (which may name the database's address) goes to the log only: readiness needs no key
            index.status = f"failed: {type(exc).__name__} (see the server log)"
            return
        while True:
            await asyncio.sleep(config.index_refresh_seconds)
            try:
                await off_loop(app, index.matcher.refresh)
            except Exception:  # logged once per outage, not every refresh interval
                if not index.refresh_failing:
                    log.exception("cannot refresh the match index (matching goes on with the one loaded; readiness fails "
                                  "after %g s)", config.index_stale_seconds)
                index.refresh_failing = True
            else:
                if index.refresh_failing:
                    log.warning("the match index follows the store again")
                index.refreshed_at, index.refresh_failing = time.monotonic(), False

    loading = asyncio.create_task(load())
    try:
        yield
    finally:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading


def crawl_jobs_dir(config: ApiConfig) -> Path:
    """Where crawl jobs keep their input and output: `crawl_jobs_dir`, else a folder beside a
    SQLite store, else (a PostgreSQL store: give replicas a shared folder) the user data folder."""
    if config.crawl_jobs_dir:
        return Path(config.crawl_jobs_dir)
    location = os.fspath(config.db_path) if config.db_path is not None else os.environ.get(DB_ENV) or str(default_db_path())
    if is_postgres_location(location):
        return user_data_dir() / "crawl-jobs"
    return Path(f"{location}.crawl-jobs")


async def _crawl_jobs(app: web.Application) -> AsyncIterator[None]:
    """Take crawl jobs from the store and run them in this process once the match index is loaded;
    on shutdown, running jobs are stopped and their leases given back (they resume elsewhere)."""
    config = app[CONFIG]
    folder = crawl_jobs_dir(config)
    if config.crawl_jobs_dir:  # a folder the operator named: a wrong one stops the start-up, not each job submitted
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelsieveError(f"cannot use the crawl jobs folder {folder}: {exc.strerror}") from None
    jobs = CrawlJobs(app[STORE], folder)
    app[CRAWL_JOBS] = jobs
    index = app[MATCH_INDEX]

    def crawl_config(mode: str) -> CrawlConfig:
        # the store's job record holds the mode as text; PolicyConfig refuses anything but search/host
        return CrawlConfig(policy=PolicyConfig(mode=cast(Mode, mode)), addresses=AddressPolicy(allow_loopback=config.crawl_allow_loopback))

    crawl_loop = app[CRAWL_LOOP] = LoopThread("modelsieve-crawl-jobs", cpu_threads())
    runner = app[JOB_RUNNER] = JobRunner(jobs, crawl_config, app[METRICS], crawl_loop, config.crawl_jobs_per_process)

    async def run() -> None:
        if config.crawl_jobs_per_process == 0:
            return  # this process only accepts jobs; others run them
        if app[STORE].read_only:  # a store it cannot write: no job can be claimed, say so once
            log.warning("crawl jobs: not run by this server: its store is read-only here")
            return
        while index.matcher is None:
            await asyncio.sleep(0.1)
        await runner.run_forever(StoreLookup(index.matcher))

    running = asyncio.create_task(run())
    try:
        yield
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await crawl_loop.close()  # jobs still winding down there give their leases back first
