"""The API while another write holds the store (a bundle import, another process's change):
the loop that answers requests never waits for the store's write lock."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from modelsieve.api.http.state import STORE
from modelsieve.hashlists.bundles import PAUSE_ENV, export_list
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.signing import generate_key_files, load_private_key
from modelsieve.hashlists.sqlite_store import SQLiteStore
from modelsieve.hashlists.trust import trust_publisher
from tests.api_support import Api, ready, start_api

LISTED = hashlib.sha256(b"a listed model file").hexdigest()


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path) -> Api:
    with SQLiteStore(tmp_path / "store.db") as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", digests={"sha256": LISTED}))
    config = {"crawl_allow_loopback": True, "crawl_jobs_dir": tmp_path / "jobs"}
    return await ready(await start_api(aiohttp_client, tmp_path / "store.db", **config))


class WriteHold:
    """A thread inside a write transaction of the server's own store, as a long bundle import is,
    until `end` is set (or, bounded, 30 s pass); `ended` says whether it has let go."""

    def __init__(self, store: Any) -> None:
        self.end, self.entered, self.ended = threading.Event(), threading.Event(), False
        self._thread = threading.Thread(target=self._hold, args=(store,))
        self._thread.start()

    def _hold(self, store: Any) -> None:
        with store.transaction():
            self.entered.set()
            self.end.wait(30)
            self.ended = True

    async def release(self) -> None:
        self.end.set()
        await asyncio.to_thread(self._thread.join)


async def test_lookups_are_answered_while_a_write_holds_the_store_and_a_crawl_job_waits(api: Api) -> None:
    """Crawl job submission and the job runner's periodic claim wrote to the store on the request
    loop: while a bundle import held the store, every request of the server (lookups, health
    checks) waited for the import to commit."""
    hold = WriteHold(api.client.server.app[STORE])
    try:
        assert await asyncio.to_thread(hold.entered.wait, 30)
        submitted = asyncio.create_task(
            api.client.post("/v1/crawl", json={"urls": ["http://127.0.0.1:9/model.safetensors"]}, headers=api.as_("crawl"))
        )
        await asyncio.sleep(0.5)  # lets the submission reach the store (no assertion rests on this delay)
        assert (await api.get_json(f"/v1/lookup?sha256={LISTED}", "lookup"))["verdict"] == "exact"
        assert not hold.ended, "the lookup was answered only once the write had ended"
        assert not submitted.done()  # the submission itself waits for the store, on a thread
    finally:
        await hold.release()
    response = await submitted
    assert response.status == 202, await response.text()


async def test_a_bundle_import_cut_off_by_the_request_timeout_applies_nothing(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import ran on a thread that the request timeout did not stop: the client got 503
    "not finished" and the bundle was applied anyway a moment later (a retry then said replayed)."""
    generate_key_files(tmp_path / "a.key", tmp_path / "a.pub")
    with SQLiteStore(tmp_path / "a.db") as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", digests={"sha256": "c" * 64}))
        export_list(store, "main", load_private_key(tmp_path / "a.key"), tmp_path / "main.jsonl")
    db_path = tmp_path / "b.db"
    with SQLiteStore(db_path) as store:
        trust_publisher(store, "platform-a", (tmp_path / "a.pub").read_text(), "full")
    api = await ready(await start_api(aiohttp_client, db_path, request_timeout=0.5, upload_timeout=0.5))
    marker = tmp_path / "pause"
    monkeypatch.setenv(PAUSE_ENV, str(marker))  # the import stops inside its transaction until told to go on
    response = await api.client.post("/v1/lists/main/bundle", data=(tmp_path / "main.jsonl").read_bytes(), headers=api.as_("lists:write"))
    assert response.status == 503 and "not finished" in (await response.json())["error"]
    # usually paused inside its transaction by now (under heavy load it may have been stopped earlier)
    Path(f"{marker}.resume").touch()
    with SQLiteStore(db_path, busy_timeout=60) as store:
        with store.transaction():  # waits until the import's transaction has ended
            pass
        assert list(store.entries()) == [] and store.sync_position("platform-a", "main") == 0
    monkeypatch.delenv(PAUSE_ENV)
    response = await api.client.post("/v1/lists/main/bundle", data=(tmp_path / "main.jsonl").read_bytes(), headers=api.as_("lists:write"))
    assert response.status == 200 and (await response.json())["entries"] == 1


async def test_a_crawl_submission_cut_off_by_the_request_timeout_stores_no_job(aiohttp_client: Any, tmp_path: Path) -> None:
    """The submission waited for the store on a thread the request timeout did not stop: the client
    got 503 "not finished, retry" and the job was stored anyway once the store was free, so the
    retry crawled every URL a second time."""
    jobs = tmp_path / "jobs"
    api = await ready(await start_api(aiohttp_client, tmp_path / "store.db", request_timeout=0.5, crawl_jobs_dir=jobs, crawl_jobs_per_process=0))
    hold = WriteHold(api.client.server.app[STORE])
    try:
        assert await asyncio.to_thread(hold.entered.wait, 30)
        response = await api.client.post("/v1/crawl", json={"urls": ["http://127.0.0.1:9/model.safetensors"]}, headers=api.as_("crawl"))
        assert response.status == 503 and "not finished" in (await response.json())["error"]
    finally:
        await hold.release()
    with SQLiteStore(tmp_path / "store.db", busy_timeout=60) as store:
        with store.transaction():  # waits until the submission's transaction, if any, has ended
            pass
    await asyncio.sleep(0.5)  # the submission's thread gives up after the commit it refused (no assertion rests on it)
    with sqlite3.connect(tmp_path / "store.db") as connection:
        assert connection.execute("SELECT count(*) FROM api_crawl_jobs").fetchone() == (0,)
    assert not jobs.exists() or not any(jobs.iterdir())
    retried = await api.post_json("/v1/crawl", "crawl", {"urls": ["http://127.0.0.1:9/model.safetensors"]}, status=202)
    assert (await api.get_json(f"/v1/crawl/{retried['id']}", "crawl"))["total"] == 1
