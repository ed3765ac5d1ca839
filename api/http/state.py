"""Typed keys of the state an application shares between its handlers."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from modelsieve.api.http.auth import ApiKey, CachedKeys
from modelsieve.api.http.config import ApiConfig
from modelsieve.api.http.errors import api_error
from modelsieve.api.http.metrics import Metrics
from modelsieve.api.http.ratelimit import RateLimiter

if TYPE_CHECKING:
    from modelsieve.api.http.audit import AuditLog
    from modelsieve.api.http.crawljobs import CrawlJobs, JobRunner
    from modelsieve.api.http.offload import LoopThread
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from modelsieve.hashlists.matcher import Matcher
    from modelsieve.hashlists.store import Store

CONFIG = web.AppKey("config", ApiConfig)
METRICS = web.AppKey("metrics", Metrics)
LIMITER = web.AppKey("limiter", RateLimiter)
KEYS = web.AppKey("keys", CachedKeys)
STORE: web.AppKey[Store] = web.AppKey("store")
PUBLISHER_KEY: web.AppKey[Ed25519PrivateKey | None] = web.AppKey("publisher_key")
UPLOAD_SLOTS = web.AppKey("upload_slots", asyncio.Semaphore)
CPU_POOL = web.AppKey("cpu_pool", ThreadPoolExecutor)  # bounded threads for CPU-bound work (offload.off_loop)
CRAWL_JOBS: web.AppKey[CrawlJobs] = web.AppKey("crawl_jobs")
JOB_RUNNER: web.AppKey[JobRunner] = web.AppKey("job_runner")
CRAWL_LOOP: web.AppKey[LoopThread] = web.AppKey("crawl_loop")  # the thread crawl jobs run on
AUDIT: web.AppKey[AuditLog] = web.AppKey("audit")
OPENAPI = web.AppKey("openapi", dict)
# name -> check(app) returning "ok" or why the part is not ready; /v1/readyz reports them all
READINESS_CHECKS = web.AppKey("readiness_checks", dict)
CALLER = web.RequestKey("caller", ApiKey)


@dataclass
class MatchIndex:
    """The matcher once its index is loaded (None until then), how loading went, and when the
    index last followed the store (monotonic seconds) and whether its refreshes fail since."""

    matcher: Matcher | None = None
    status: str = "loading"
    refreshed_at: float = 0.0
    refresh_failing: bool = False

    def readiness(self, now: float, stale_after: float) -> str:
        """"ok", or why lookups should not be sent here: loading, failed, or an index that has not
        followed the store for over `stale_after` seconds (new entries would answer "none")."""
        if self.status != "ok" or not self.refresh_failing or now - self.refreshed_at <= stale_after:
            return self.status
        # the reason (which may name the database's address) goes to the log only: readiness needs no key
        return f"stale: not refreshed for {now - self.refreshed_at:.0f} s (the store cannot be read; see the server log)"


MATCH_INDEX = web.AppKey("match_index", MatchIndex)


def loaded_matcher(app: web.Application) -> Matcher:
    """The matcher once its index is loaded; until then a 503 asking to retry."""
    matcher = app[MATCH_INDEX].matcher
    if matcher is None:
        raise api_error(503, "the match index is still loading", headers={"Retry-After": "2"})
    return matcher
