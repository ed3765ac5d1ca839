"""Hostile request bodies on the routes that take raw bytes: uploads and bundle imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from safetensors.numpy import save as save_bytes

from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_support import Api, ready, start_api
from tests.hashlists_fixtures import lora_arrays
from tests.test_api_match import file_digests


@pytest.fixture
def listed_file() -> bytes:
    return save_bytes(lora_arrays(3))


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path, listed_file: bytes) -> Api:
    db_path = tmp_path / "store.db"
    with SQLiteStore(db_path) as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", kind="lora", digests=file_digests(listed_file)))
    return await ready(await start_api(aiohttp_client, db_path, upload_limit=256 * 1024, bundle_body_limit=64 * 1024))


async def test_a_form_upload_is_415_not_the_digests_of_its_envelope(api: Api, listed_file: bytes) -> None:
    """`curl -F file=@model.safetensors` sends a multipart envelope: it was hashed as the file and
    answered 200 with verdict "none" for a listed file."""
    form = aiohttp.FormData()
    form.add_field("file", listed_file, filename="model.safetensors", content_type="application/octet-stream")
    for path, scope in (("/v1/match/file", "lookup"), ("/v1/lists/main/bundle", "lists:write")):
        response = await api.client.post(path, data=form, headers=api.as_(scope))
        body = await response.json()
        assert response.status == 415 and "--data-binary" in body["error"], body
    # the raw bytes, whatever curl --data-binary labels them, are the file
    response = await api.client.post("/v1/match/file", data=listed_file,
                                     headers={**api.as_("lookup"), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 200 and (await response.json())["verdict"] == "exact"


async def test_hostile_bundle_bodies_are_4xx_with_a_json_error(api: Api) -> None:
    """A manifest line nested past the JSON parser's recursion limit was a 500."""
    async def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 4096

    for body, status in ((b"[" * 30_000 + b"]" * 30_000 + b"\n", 422), (b"\xff\xfe" * 10 + b"\n", 422), (b"", 422), (chunks(), 413)):
        response = await api.client.post("/v1/lists/main/bundle", data=body, headers=api.as_("lists:write"))
        assert response.status == status and response.content_type == "application/json"
        assert set(await response.json()) == {"error", "status"}


async def test_a_reason_with_a_nul_character_is_400_and_changes_nothing(api: Api) -> None:
    """PostgreSQL text cannot hold NUL: on that backend such a reason was a 500."""
    with SQLiteStore(api.db_path) as store:
        [entry] = store.entries()
    for route, body in (("retract", {"reason": "a\u0000b"}), ("opinion", {"opinion": "dispute", "reason": "\u0000"})):
        response = await api.client.post(f"/v1/entries/{entry.id}/{route}", json=body, headers=api.as_("lists:write"))
        assert response.status == 400 and "body.reason" in (await response.json())["error"]
    with SQLiteStore(api.db_path) as store:
        assert store.get_entry(entry.id).status == "active"

