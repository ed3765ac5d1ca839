"""The application factory: `create_app(config)` builds one API server's aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from modelsieve.api.http.auth import KeyStore
from modelsieve.api.http.config import ApiConfig
from modelsieve.api.http.errors import error_middleware
from modelsieve.api.http.metrics import Metrics
from modelsieve.api.http.openapi import openapi_document
from modelsieve.api.http.ratelimit import RateLimiter
from modelsieve.api.http.routes import ROUTES
from modelsieve.api.http.routing import add_routes
from modelsieve.api.http.state import (
    CONFIG,
    DATABASE,
    FINGERPRINT_KEY,
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
from modelsieve.fingerprint.fuzzy import load_key
from modelsieve.hashlists.db import open_database
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.signing import load_private_key
from modelsieve.hashlists.store import open_store

log = logging.getLogger("modelsieve.api")


def create_app(config: ApiConfig | None = None) -> web.Application:
    """An application serving the store at `config.db_path`; opened on start-up, closed on cleanup."""
    config = config or ApiConfig()
    metrics = Metrics()
    app = web.Application(middlewares=[metrics.middleware(), error_middleware], client_max_size=config.json_body_limit)
    app[CONFIG] = config
    app[METRICS] = metrics
    app[LIMITER] = RateLimiter(config.rate_per_second, config.rate_burst)
    app[READINESS_CHECKS] = {}
    app[OPENAPI] = openapi_document(ROUTES)
    app[UPLOAD_SLOTS] = asyncio.Semaphore(config.concurrent_uploads)
    app[MATCH_INDEX] = MatchIndex()
    app.cleanup_ctx.extend([_store, _match_index])
    add_routes(app, ROUTES)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    """Open the store, the key table and the signing and fingerprint keys for this process's lifetime."""
    config = app[CONFIG]
    app[FINGERPRINT_KEY] = load_key(config.fingerprint_key_path)
    app[PUBLISHER_KEY] = load_private_key(config.publisher_key_path) if config.publisher_key_path else None
    db = open_database(config.db_path)
    store = open_store(config.db_path)
    app[DATABASE] = db
    app[STORE] = store
    app[KEYS] = KeyStore(db)
    app[READINESS_CHECKS]["store"] = lambda app: "ok"
    try:
        yield
    finally:
        app[READINESS_CHECKS].pop("store", None)
        store.close()
        db.close()


async def _match_index(app: web.Application) -> AsyncIterator[None]:
    """Load the matcher's index in the background (a large store takes a while): until it is
    loaded, readiness says "loading" and match routes answer 503 with Retry-After."""
    index = app[MATCH_INDEX]
    app[READINESS_CHECKS]["index"] = lambda app: index.status

    async def load() -> None:
        try:
            index.matcher = await asyncio.to_thread(Matcher.for_store, app[STORE], app[FINGERPRINT_KEY])
            index.status = "ok"
        except Exception as exc:
            log.exception("cannot load the match index")
            index.status = f"failed: {exc}"

    loading = asyncio.create_task(load())
    try:
        yield
    finally:
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
