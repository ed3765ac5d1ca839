"""Work kept off the server's event loop, so that requests are answered while it runs.

CPU-bound calls — digesting uploads, fingerprinting, matching fingerprints, parsing big JSON
bodies, refreshing the match index — run on one bounded thread pool per process (`off_loop`;
hashlib, blake3 and numpy release the GIL for the heavy part). Crawl jobs run on an event loop
of their own in a thread (`LoopThread`): their downloads, digests, header parsing and bookkeeping
never hold up the loop that serves requests.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web

from modelsieve.api.http.state import CPU_POOL

T = TypeVar("T")


def cpu_threads() -> int:
    """Threads of a CPU pool: one per core, at least two (one long refresh must not stall the rest)."""
    return max(2, os.cpu_count() or 2)


async def off_loop(app: web.Application, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` on the application's CPU pool; the loop serves others meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(app[CPU_POOL], functools.partial(function, *args, **kwargs))


class LoopThread:
    """An event loop running in a thread of its own, with a bounded pool for its CPU-bound calls."""

    def __init__(self, name: str, threads: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(threads, thread_name_prefix=f"{name}-cpu"))
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await `coroutine` run on this thread's loop; cancelling the caller cancels it there."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def close(self) -> None:
        """Cancel what still runs on this loop, wait until it has wound down, then end the thread."""

        async def wind_down() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wind_down(), self.loop))
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join)
