"""A SQLite store whose write lock another process holds: a one-line error (503 over HTTP), never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modelsieve.api.http.errors import error_middleware
from modelsieve.hashlists.errors import StoreUnavailableError
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore

ENTRY = NewEntry(category="2c", digests={"sha256": "a" * 64})


def test_a_write_waiting_past_the_busy_timeout_is_a_store_unavailable_error(tmp_path: Path) -> None:
    """A second handle (as another process would) wanting to write while a long import holds the
    lock got sqlite3.OperationalError "database is locked": a traceback from `list import`."""
    with SQLiteStore(tmp_path / "s.db") as importer, SQLiteStore(tmp_path / "s.db", busy_timeout=0.05) as other:
        importer.create_list("reports")
        with importer.transaction():
            importer.add_entry("reports", ENTRY)
            with pytest.raises(StoreUnavailableError, match=r"is busy: another process held its write lock for over 0.05 s"):
                other.add_entry("reports", NewEntry(category="2c", digests={"sha256": "b" * 64}))
            assert list(other.entries()) == []  # reads go on from the last committed state
        assert other.add_entry("reports", NewEntry(category="2c", digests={"sha256": "b" * 64})) is not None
        assert len(list(other.entries())) == 2


async def test_a_busy_store_is_503_with_retry_after(aiohttp_client: Any, tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "s.db") as importer, SQLiteStore(tmp_path / "s.db", busy_timeout=0.05) as other:
        importer.create_list("reports")

        async def write(request: web.Request) -> web.Response:
            other.add_entry("reports", ENTRY)
            return web.json_response({})

        app = web.Application(middlewares=[error_middleware])
        app.router.add_post("/write", write)
        client = await aiohttp_client(app)
        with importer.transaction():
            response = await client.post("/write")
            assert response.status == 503 and response.headers["Retry-After"] == "5"
            assert "is busy" in (await response.json())["error"]
        assert (await client.post("/write")).status == 200
