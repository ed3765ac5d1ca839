"""Typed keys of the state an application shares between its handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from modelsieve.api.http.auth import ApiKey, KeyStore
from modelsieve.api.http.config import ApiConfig
from modelsieve.api.http.metrics import Metrics
from modelsieve.api.http.ratelimit import RateLimiter

if TYPE_CHECKING:
    import sqlite_utils

CONFIG = web.AppKey("config", ApiConfig)
METRICS = web.AppKey("metrics", Metrics)
LIMITER = web.AppKey("limiter", RateLimiter)
DATABASE: web.AppKey["sqlite_utils.Database"] = web.AppKey("database")
KEYS = web.AppKey("keys", KeyStore)
CALLER = web.RequestKey("caller", ApiKey)
OPENAPI = web.AppKey("openapi", dict)
# name -> check(app) returning "ok" or why the part is not ready; /v1/readyz reports them all
READINESS_CHECKS = web.AppKey("readiness_checks", dict)
