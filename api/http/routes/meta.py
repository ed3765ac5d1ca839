"""The API describing itself: its OpenAPI document and its Prometheus metrics."""

from __future__ import annotations

from aiohttp import web

from modelsieve.api.http.auth import ANY_SCOPE
from modelsieve.api.http.metrics import metrics_response
from modelsieve.api.http.routing import Call, Response, Route
from modelsieve.api.http.state import METRICS, OPENAPI


async def openapi(call: Call) -> web.Response:
    """This API's OpenAPI 3.1 document."""
    return web.json_response(call.app[OPENAPI])


async def metrics(call: Call) -> web.Response:
    """Prometheus text format; needs an admin key (scrape with `authorization: credentials: KEY`)."""
    return metrics_response(call.app[METRICS])


ROUTES = (
    Route("GET", "/v1/openapi.json", openapi, "the OpenAPI document of this API", ANY_SCOPE, "meta", {200: Response("OpenAPI 3.1", {"type": "object"})}),
    Route(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics: requests, latencies, matches by kind, crawl progress",
        "admin",
        "meta",
        {200: Response("Prometheus text exposition format", {"type": "string"}, media_type="text/plain")},
    ),
)
