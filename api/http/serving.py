"""Running one API process until SIGTERM or SIGINT, letting the requests in flight finish first.

aiohttp's `run_app` stops reading from every connection as soon as its shutdown begins, so a
request whose body is still arriving (a hub's upload during a deploy) hangs until the shutdown
timeout and is then dropped without an answer. `serve` closes the listening socket first, gives
the requests in flight (their bodies included) up to `grace` seconds to finish, and only then runs
aiohttp's own shutdown and the application's cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class InFlight:
    """The requests an application is handling now, so that a shutdown can wait for them."""

    def __init__(self) -> None:
        self.requests = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def middleware(self) -> Middleware:
        """Count each request from its start to its handler's answer."""

        @web.middleware
        async def track(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            self.requests += 1
            self._idle.clear()
            try:
                return await handler(request)
            finally:
                self.requests -= 1
                if not self.requests:
                    self._idle.set()

        return track

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight, at most `timeout` seconds; whether none is."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return not self.requests


IN_FLIGHT = web.AppKey("in_flight", InFlight)


async def serve(app: web.Application, host: str, port: int, *, reuse_port: bool, grace: float, announce: Callable[[str], None]) -> None:
    """Serve `app` on host:port until SIGTERM or SIGINT; then stop accepting connections, let the
    requests in flight finish (at most `grace` seconds), and shut down. OSError when the address
    cannot be bound."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=grace)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
        announce(f"======== Running on {site.name} ========")
        await stop.wait()
        await site.stop()  # no new connections; the open ones are still read and answered
        await app[IN_FLIGHT].drained(grace)
    finally:
        await runner.cleanup()
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
