"""JSON error responses: every failure the API reports is `{"error": MESSAGE, "status": CODE}`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.errors import NotFoundError, StoreUnavailableError

log = logging.getLogger("modelsieve.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

def error_body(status: int, message: str) -> str:
    """The JSON body of every API error: {"error": message, "status": status}."""
    return json.dumps({"error": message, "status": status})


def api_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.HTTPException:
    """An HTTP error to raise from a handler, with a one-line message in a JSON body."""
    error = web.HTTPException(text=error_body(status, message), content_type="application/json", headers=headers)
    error.set_status(status)
    return error


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text errors, ModelsieveErrors and crashes into JSON error bodies.

    A ModelsieveError is the client's bad input (422 with its one-line message; 404 for something
    named that does not exist) or, a StoreUnavailableError, a store down or busy (503); anything else
    unexpected is logged with its traceback and answered with a bare 500 that leaks nothing.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return web.Response(
            status=exc.status, text=error_body(exc.status, message), content_type="application/json", headers=_kept_headers(exc)
        )
    except StoreUnavailableError as exc:  # the store down or busy with another process's write: retry
        return web.Response(status=503, text=error_body(503, str(exc)), content_type="application/json", headers={"Retry-After": "5"})
    except ModelsieveError as exc:
        status = 404 if isinstance(exc, NotFoundError) else 422
        return web.Response(status=status, text=error_body(status, str(exc)), content_type="application/json")
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return web.Response(status=500, text=error_body(500, "internal error (logged on the server)"), content_type="application/json")


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    return {name: value for name, value in exc.headers.items() if name in ("Allow", "Retry-After")}
