"""An API application served from a background thread, for synchronous clients (schemathesis, bench)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from modelsieve.api.http import ApiConfig, create_app


@contextmanager
def serving(config: ApiConfig) -> Iterator[str]:
    """Serve `create_app(config)` on a free loopback port; yields its base URL, stops on exit."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(config), access_log=None)
    started = threading.Event()
    base: list[str] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base.append(f"http://127.0.0.1:{port}")
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the API did not start within 30 s")
    _wait_until_ready(base[0])
    try:
        yield base[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def _wait_until_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/v1/readyz", timeout=5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the API did not become ready within 30 s")
