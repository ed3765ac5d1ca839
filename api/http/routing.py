"""Routes declared once: the router, the auth / rate-limit / validation frame and OpenAPI use them.

Every handler receives a `Call`: the caller's key and the query, path and body already checked
against the route's JSON schemas, so handlers never see unvalidated input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aiohttp import web

from modelsieve.api.http import validation
from modelsieve.api.http.auth import ApiKey, bearer_token
from modelsieve.api.http.errors import api_error
from modelsieve.api.http.offload import off_loop
from modelsieve.api.http.state import CALLER, CONFIG, KEYS, LIMITER


INLINE_BODY_BYTES = 64 * 1024  # larger JSON bodies (fingerprints: up to 16 MiB) are parsed on the CPU pool


@dataclass(frozen=True)
class Call:
    """One admitted request: who called, and its checked input."""

    request: web.Request
    key: ApiKey | None
    query: dict[str, Any]
    path: dict[str, Any]
    body: Any

    @property
    def app(self) -> web.Application:
        return self.request.app


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Response:
    """A documented response: its description and, for JSON, its schema."""

    description: str
    schema: Mapping[str, Any] | None = None
    media_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    """One operation of the API.

    `scope` None makes it public (health checks only). `body` is the JSON schema of a JSON body;
    `stream_body` names the media type of a body the handler streams itself (uploads).
    `body_limit` / `timeout` None take the configured defaults.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    scope: str | None
    tag: str
    responses: Mapping[int, Response]
    query: dict[str, Any] | None = None  # JSON schemas: dicts, the only mapping jsonschema_rs compiles
    path_params: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    stream_body: str | None = None
    body_limit: Callable[[Any], int] | None = None
    timeout: Callable[[Any], float] | None = None
    description: str = ""
    operation_id: str = field(default="")

    @cached_property
    def validators(self) -> dict[str, validation.Checker]:
        schemas = {"query": self.query, "path": self.path_params, "body": self.body}
        return {where: validation.compile_schema(schema) for where, schema in schemas.items() if schema is not None}


def add_routes(app: web.Application, routes: Sequence[Route]) -> None:
    """Register routes, each wrapped in the frame that authenticates, limits and validates."""
    for route in routes:
        route.validators  # compile (and check) every schema at start-up, not on first use
        handler = _framed(route)
        app.router.add_route(route.method, route.path, handler, name=route.operation_id or None)
        if route.method == "GET" and route.scope is None:  # load balancers' health checks may use HEAD
            app.router.add_route("HEAD", route.path, handler, name=route.operation_id or None)


def _framed(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        config = request.app[CONFIG]
        timeout = route.timeout(config) if route.timeout else config.request_timeout
        try:
            async with asyncio.timeout(timeout):
                key = _admit(request, route)
                call = Call(
                    request=request,
                    key=key,
                    query=_checked(route, "query", validation.query_values(request.query, route.query or {})),
                    path=_checked(route, "path", dict(request.match_info)),
                    body=await _body(request, route),
                )
                return await route.handler(call)
        except TimeoutError:
            raise api_error(503, f"request not finished within {timeout:g} s", headers={"Retry-After": "1"}) from None

    handle.__name__ = route.handler.__name__
    handle.__doc__ = route.summary
    return handle


def _admit(request: web.Request, route: Route) -> ApiKey | None:
    """The caller's key when it has the route's scope and is within its rate; else 401/403/429."""
    if route.scope is None:
        return None
    token = bearer_token(request.headers.get("Authorization"))
    challenge = {"WWW-Authenticate": 'Bearer realm="modelsieve"'}
    if token is None:
        raise api_error(401, "an API key is required: send `Authorization: Bearer KEY`", headers=challenge)
    key = request.app[KEYS].verify(token)
    if key is None:
        raise api_error(401, "unknown or revoked API key", headers=challenge)
    if not key.allows(route.scope):
        raise api_error(403, f"this API key lacks the {route.scope!r} scope")
    wait = request.app[LIMITER].check(key.key_id, key.rate_per_second)
    if wait:
        raise api_error(429, f"rate limit exceeded for this API key; retry in {wait} s", headers={"Retry-After": str(wait)})
    request[CALLER] = key
    return key


def _checked(route: Route, where: str, values: dict[str, Any]) -> dict[str, Any]:
    checker = route.validators.get(where)
    if checker is not None:
        checker.check(values, where)
    elif where == "query" and values:
        raise api_error(400, f"query: this operation takes no parameters (got {', '.join(sorted(values))})")
    return values


async def _body(request: web.Request, route: Route) -> Any:
    if route.stream_body is not None:
        validation.check_raw_body(request, route.stream_body)
    if route.body is None:
        return None
    config = request.app[CONFIG]
    limit = route.body_limit(config) if route.body_limit else config.json_body_limit
    raw = await validation.json_bytes(request, limit)
    if len(raw) <= INLINE_BODY_BYTES:
        return _checked_body(route, raw)
    return await off_loop(request.app, _checked_body, route, raw)


def _checked_body(route: Route, raw: bytes) -> Any:
    body = validation.parse_json(raw)
    route.validators["body"].check(body, "body")
    return body
