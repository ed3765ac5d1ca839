"""The API on PostgreSQL when the database drops its connections (a restart, a failover): every
request that needs the store answers 503 with Retry-After, and the crawl job runner carries on."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from modelsieve.api.http.crawljobs import POLL_SECONDS
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.store import open_store
from tests.api_support import Api, ready, start_api
from tests.store_backends import StoreLocations

LISTED = hashlib.sha256(b"a listed model file").hexdigest()


@pytest.fixture
def location(tmp_path: Path) -> Iterator[str]:
    locations = StoreLocations("postgresql", tmp_path)
    dsn = locations.new()
    with open_store(dsn) as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", digests={"sha256": LISTED}))
    yield dsn
    locations.drop()


def drop_connections(dsn: str) -> int:
    """Terminate every other session of the store's role on the server (as a restart would)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = current_user AND pid <> pg_backend_pid() "
            "AND query NOT ILIKE '%pg_stat_activity%' AND application_name = ''"
        ).fetchall()
    return len(rows)


async def eventually_answered(api: Api, method: str, path: str, scope: str, **kwargs: Any) -> Any:
    """The request's answer once the store is back, retrying only on 503 + Retry-After (bounded)."""
    for _ in range(50):
        response = await api.client.request(method, path, headers=api.as_(scope), **kwargs)
        if response.status != 503:
            assert response.status < 300, await response.text()
            return await response.json()
        assert response.headers["Retry-After"]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{method} {path} never answered")


async def test_dropped_database_connections_are_503s_and_the_job_runner_survives(aiohttp_client: Any, tmp_path: Path, location: str) -> None:
    config = {"audit_log": tmp_path / "audit.jsonl", "index_refresh_seconds": 3600, "crawl_jobs_dir": tmp_path / "jobs", "crawl_allow_loopback": True}
    api = await ready(await start_api(aiohttp_client, location, **config))  # type: ignore[arg-type]
    assert (await api.get_json(f"/v1/lookup?sha256={LISTED}", "lookup"))["verdict"] == "exact"
    assert drop_connections(location)
    response = await api.client.get(f"/v1/lookup?sha256={LISTED}", headers=api.as_("lookup"))
    assert response.status == 503 and response.headers["Retry-After"], await response.text()  # was a 500 and a traceback
    assert (await eventually_answered(api, "GET", f"/v1/lookup?sha256={LISTED}", "lookup"))["verdict"] == "exact"

    # the job runner's next claims meet dropped connections too; it used to die there for good
    assert drop_connections(location)
    await asyncio.sleep(2 * POLL_SECONDS + 0.5)
    job = await eventually_answered(api, "POST", "/v1/crawl", "crawl", json={"urls": ["http://127.0.0.1:9/model.safetensors"]})
    for _ in range(300):
        status = await eventually_answered(api, "GET", f"/v1/crawl/{job['id']}", "crawl")
        if status["status"] == "done":
            break
        await asyncio.sleep(0.1)
    assert status["status"] == "done" and status["done"] == 1, status
