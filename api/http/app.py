"""The application factory: `create_app(config)` builds one API server's aiohttp application."""

from __future__ import annotations

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
from modelsieve.api.http.state import CONFIG, DATABASE, KEYS, LIMITER, METRICS, OPENAPI, READINESS_CHECKS
from modelsieve.hashlists.db import open_database


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
    app.cleanup_ctx.append(_store)
    add_routes(app, ROUTES)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    """Open the store and the key table for this process's lifetime."""
    db = open_database(app[CONFIG].db_path)
    app[DATABASE] = db
    app[KEYS] = KeyStore(db)
    app[READINESS_CHECKS]["store"] = lambda app: "ok"
    try:
        yield
    finally:
        app[READINESS_CHECKS].pop("store", None)
        db.close()
