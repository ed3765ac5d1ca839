"""A static file host on loopback, in a background thread, for the demo's crawl (Range requests work)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web


@contextmanager
def serve_folder(folder: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `folder` at http://127.0.0.1:PORT/ (a free port) until the block ends; yields the base URL."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_static("/", folder)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, host, 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, name="demo-file-host", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}/"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
