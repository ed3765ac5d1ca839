"""The server keeps answering while CPU-bound work is under way: the threads that do it are blocked
on purpose (threading.Event), and requests that need only the event loop still complete."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from modelsieve.api.http.offload import cpu_threads
from modelsieve.api.http.routing import INLINE_BODY_BYTES
from modelsieve.api.http.state import CPU_POOL, CRAWL_LOOP
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_support import Api, ready, start_api
from tests.crawler_fakes import file_host
from tests.hashlists_fixtures import lora_arrays, lora_fingerprint

LISTED = hashlib.sha256(b"a listed model file").hexdigest()
LATER = hashlib.sha256(b"a model listed while the server runs").hexdigest()
HOSTED = safetensors_bytes(lora_arrays(7))


@pytest.fixture
async def api(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Api:
    with SQLiteStore(tmp_path / "store.db") as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", digests={"sha256": LISTED}))
        store.add_entry("main", NewEntry(category="2c", kind="lora", digests={"sha256": hashlib.sha256(HOSTED).hexdigest()}))
        store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(1).to_bytes(), evidence="fuzzy"))
    config = {"crawl_allow_loopback": True, "crawl_jobs_dir": tmp_path / "jobs", "index_refresh_seconds": 0.05}
    return await ready(await start_api(aiohttp_client, tmp_path / "store.db", **config))


async def verdict(api: Api, sha256: str) -> str:
    return (await api.get_json(f"/v1/lookup?sha256={sha256}", "lookup"))["verdict"]


class Blocked:
    """Every thread of a pool (or a loop's thread) waiting on one Event until the block ends."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)

    def hold(self) -> None:
        self.waiting.release()
        self.release.wait()

    async def held(self, count: int) -> None:
        """Until `count` threads are waiting (bounded: the loop is never blocked here)."""
        for _ in range(count):
            assert await asyncio.to_thread(self.waiting.acquire, timeout=60)


@pytest.fixture
async def blocked() -> AsyncIterator[Blocked]:
    block = Blocked()
    try:
        yield block
    finally:
        block.release.set()  # a failing test must not leave threads waiting


async def test_lookups_are_answered_while_every_cpu_thread_is_busy(api: Api, blocked: Blocked) -> None:
    pool = api.client.server.app[CPU_POOL]
    for _ in range(cpu_threads()):
        pool.submit(blocked.hold)
    await blocked.held(cpu_threads())
    near = {"fingerprint": lora_fingerprint(1, dtype=np.float16).to_json()}
    fingerprint_match = asyncio.create_task(api.post_json("/v1/match/fingerprint", "lookup", near))
    assert await verdict(api, LISTED) == "exact"
    assert (await api.client.get("/v1/healthz")).status == 200
    assert not fingerprint_match.done(), "fingerprints are decoded and matched on the CPU pool"
    blocked.release.set()
    assert (await fingerprint_match)["verdict"] == "near"
    padded = json.dumps(near, indent=1).encode() + b" " * (INLINE_BODY_BYTES + 1)  # big enough to be parsed off the loop
    response = await api.client.post("/v1/match/fingerprint", data=padded, headers={**api.as_("lookup"), "Content-Type": "application/json"})
    assert response.status == 200 and (await response.json())["verdict"] == "near"


async def test_the_index_follows_the_store_off_the_loop_and_lookups_never_wait_for_it(api: Api, blocked: Blocked) -> None:
    pool = api.client.server.app[CPU_POOL]
    for _ in range(cpu_threads()):
        pool.submit(blocked.hold)
    await blocked.held(cpu_threads())
    with SQLiteStore(api.db_path) as store:  # e.g. an import through another replica or the CLI
        store.add_entries("main", [NewEntry(category="2c", digests={"sha256": LATER})])
    for _ in range(3):
        assert await verdict(api, LATER) == "none", "answered from the index loaded, not refreshed on the loop"
        await asyncio.sleep(0.1)  # two refresh intervals: due, but its thread is busy
    blocked.release.set()
    for _ in range(600):
        if await verdict(api, LATER) == "exact":
            break
        await asyncio.sleep(0.05)
    assert await verdict(api, LATER) == "exact", "the next index was swapped in once a thread was free"


async def test_crawl_jobs_run_on_their_own_thread_while_the_server_answers(api: Api, aiohttp_server: Any, blocked: Blocked) -> None:
    host = await aiohttp_server(file_host({"model": HOSTED}), host="127.0.0.1")
    api.client.server.app[CRAWL_LOOP].loop.call_soon_threadsafe(blocked.hold)  # as a job's CPU-bound step would
    await blocked.held(1)
    job = await api.post_json("/v1/crawl", "crawl", {"urls": [f"http://127.0.0.1:{host.port}/files/model"]}, status=202)
    assert await verdict(api, LISTED) == "exact"
    status = await api.get_json(f"/v1/crawl/{job['id']}", "crawl")
    assert status["done"] == 0 and status["recommendations"] == []
    blocked.release.set()
    for _ in range(600):
        status = await api.get_json(f"/v1/crawl/{job['id']}", "crawl")
        if status["status"] == "done":
            break
        await asyncio.sleep(0.05)
    assert status["status"] == "done" and [r["action"] for r in status["recommendations"]] == ["delist"]
