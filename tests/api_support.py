"""Helpers of the HTTP API tests: real applications on loopback, real stores, real keys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from modelsieve.api.http import ApiConfig, create_app
from modelsieve.api.http.auth import SCOPES, KeyStore
from modelsieve.api.http.state import AUDIT
from modelsieve.hashlists.store import open_store


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclasses.dataclass
class Api:
    """A running API on loopback, its store path and a key per scope (`keys["lookup"]`, ...)."""

    client: TestClient
    db_path: Path
    keys: dict[str, str]

    def as_(self, scope: str) -> dict[str, str]:
        return bearer(self.keys[scope])

    async def get_json(self, path: str, scope: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.get(path, headers=self.as_(scope), **kwargs)
        assert response.status == status, await response.text()
        return await response.json()

    def audit_lines(self) -> list[dict[str, Any]]:
        """Every audit line written so far (flushing the server's buffer first)."""
        self.client.server.app[AUDIT].flush()
        path = self.db_path.parent / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    async def post_json(self, path: str, scope: str, body: Any, status: int = 200) -> Any:
        response = await self.client.post(path, headers=self.as_(scope), json=body)
        assert response.status == status, await response.text()
        return await response.json()


def make_keys(db_path: Path, **rate: float) -> dict[str, str]:
    """One key per scope; `rate` sets per-scope key rates (e.g. lookup=0.01)."""
    with open_store(db_path) as opened:
        store = KeyStore(opened)
        return {scope: store.create([scope], name=f"test {scope}", rate_per_second=rate.get(scope.replace(":", "_")))[0] for scope in SCOPES}


async def ready(api: Api) -> Api:
    """The API once /v1/readyz says its store and match index are loaded (bounded wait)."""
    for _ in range(400):
        if (await api.client.get("/v1/readyz")).status == 200:
            return api
        await asyncio.sleep(0.05)
    raise AssertionError("the API never became ready")


async def start_api(aiohttp_client: Any, db_path: Path, **config: Any) -> Api:
    """A fresh application on the store at `db_path`, served on loopback by aiohttp's test server."""
    keys = make_keys(db_path, **config.pop("key_rates", {}))
    if "audit_log" not in config:  # a PostgreSQL store (a DSN) has no folder: give the log's path
        config["audit_log"] = db_path.parent / "audit.jsonl"
    client = await aiohttp_client(create_app(ApiConfig(db_path=db_path, **config)))
    return Api(client, db_path, keys)
