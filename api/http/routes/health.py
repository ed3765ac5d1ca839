"""Liveness and readiness: the only routes that need no key."""

from __future__ import annotations

from aiohttp import web

from modelsieve.api.http.routing import Call, Response, Route
from modelsieve.api.http.schemas import HEALTH, READINESS
from modelsieve.api.http.state import READINESS_CHECKS


async def healthz(call: Call) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(call: Call) -> web.Response:
    """Ready when every readiness check (store open, index loaded, ...) passes; else 503."""
    checks = {name: check(call.app) for name, check in call.app[READINESS_CHECKS].items()}
    ready = all(result == "ok" for result in checks.values())
    return web.json_response({"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503)


ROUTES = (
    Route("GET", "/v1/healthz", healthz, "liveness", None, "health", {200: Response("alive", HEALTH)}),
    Route(
        "GET",
        "/v1/readyz",
        readyz,
        "readiness: store open and match index loaded",
        None,
        "health",
        {200: Response("ready", READINESS), 503: Response("not ready yet", READINESS)},
    ),
)
