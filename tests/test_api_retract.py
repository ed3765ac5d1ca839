"""POST /v1/entries/{id}/retract over real loopback HTTP: a platform retracts its own entries."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelsieve.api.http import ApiConfig
from modelsieve.api.http.auth import KeyStore
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_server_thread import serving
from tests.api_support import Api, bearer, ready, start_api
from tests.hashlists_fixtures import lora_fingerprint

LISTED = hashlib.sha256(b"a listed model file").hexdigest()
OTHER = hashlib.sha256(b"another listed model file").hexdigest()
IMPORTED = hashlib.sha256(b"a model another platform listed").hexdigest()


def listed_store(path: Path) -> dict[str, str]:
    """List "main" (own: two digest entries, one LoRA fingerprint) and an entry imported from elsewhere."""
    with SQLiteStore(path) as store:
        store.create_list("main", publisher="platform-a")
        ids = {name: store.add_entry("main", NewEntry(category="2c", digests={"sha256": digest})).id for name, digest in (("listed", LISTED), ("other", OTHER))}
        fuzzy = NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(1).to_bytes(), evidence="fuzzy")
        ids["fuzzy"] = store.add_entry("main", fuzzy).id
        store.create_list("theirs", publisher="platform-b", origin_list="main")  # as a bundle import makes it
        imported = NewEntry(category="2c", digests={"sha256": IMPORTED}, id="e" + "b" * 24)
        store.add_entries("theirs", [imported], origin="platform-b")
        ids["imported"] = imported.id
    return ids


@pytest.fixture
async def platform(aiohttp_client: Any, tmp_path: Path) -> tuple[Api, dict[str, str]]:
    ids = listed_store(tmp_path / "store.db")
    return await ready(await start_api(aiohttp_client, tmp_path / "store.db")), ids


async def verdict(api: Api, sha256: str) -> str:
    return (await api.get_json(f"/v1/lookup?sha256={sha256}", "lookup"))["verdict"]


async def test_a_retracted_entry_stops_matching_at_once(platform: tuple[Api, dict[str, str]]) -> None:
    api, ids = platform
    assert await verdict(api, LISTED) == "exact"
    retracted = await api.post_json(f"/v1/entries/{ids['listed']}/retract", "lists:write", {"reason": "benign fine-tune, same base"})
    assert retracted["entry_id"] == ids["listed"] and (retracted["list"], retracted["status"]) == ("main", "retracted")
    assert await verdict(api, LISTED) == "none", "no refresh interval to wait for: hits are confirmed against the store"
    assert await verdict(api, OTHER) == "exact", "only the retracted entry stops matching"
    again = await api.post_json(f"/v1/entries/{ids['listed']}/retract", "lists:write", {})
    assert again == retracted, "a retried retraction changes nothing (no second tombstone)"

    near = {"fingerprint": lora_fingerprint(1, dtype=np.float16).to_json()}
    assert [m["entry_id"] for m in (await api.post_json("/v1/match/fingerprint", "lookup", near))["matches"]] == [ids["fuzzy"]]
    await api.post_json(f"/v1/entries/{ids['fuzzy']}/retract", "lists:write", {})
    assert (await api.post_json("/v1/match/fingerprint", "lookup", near))["verdict"] == "none"

    retractions = [line for line in api.audit_lines() if line["event"] == "retract"]
    assert [line["entry_id"] for line in retractions] == [ids["listed"], ids["listed"], ids["fuzzy"]]
    assert "benign" not in json.dumps(api.audit_lines()), "reasons are free text: never logged"
    with SQLiteStore(api.db_path) as store:
        events = [(e.action, e.entry_id, e.detail) for e in store.events() if e.action == "retract"]
    assert events == [("retract", ids["listed"], "benign fine-tune, same base"), ("retract", ids["fuzzy"], "")]


async def test_imported_unknown_and_unauthorised_retractions_are_refused(platform: tuple[Api, dict[str, str]]) -> None:
    api, ids = platform
    response = await api.client.post(f"/v1/entries/{ids['imported']}/retract", json={}, headers=api.as_("lists:write"))
    assert response.status == 409 and "only they can retract" in (await response.json())["error"]
    assert await verdict(api, IMPORTED) == "exact"
    await api.post_json("/v1/entries/e000000000000000000000000/retract", "lists:write", {}, status=404)
    for scope in ("lookup", "lists:read", "crawl"):
        assert (await api.client.post(f"/v1/entries/{ids['listed']}/retract", json={}, headers=api.as_(scope))).status == 403
    assert (await api.client.post(f"/v1/entries/{ids['listed']}/retract", json={})).status == 401
    assert await verdict(api, LISTED) == "exact"


@pytest.mark.parametrize(
    ("data", "content_type", "status", "message"),
    [
        (b'{"reason": 5}', "application/json", 400, "body.reason"),
        (b'{"reason": "x", "also": 1}', "application/json", 400, "unknown field 'also'"),
        (json.dumps({"reason": "r" * 2001}).encode(), "application/json", 400, "body.reason"),
        (json.dumps({"reason": "r" * 70_000}).encode(), "application/json", 400, "body.reason"),  # parsed on the CPU pool
        (b"{" + b" " * 70_000, "application/json", 400, "malformed JSON"),
        (b"[]", "application/json", 400, "body"),
        (b"", "application/json", 400, "malformed JSON"),
        (b"{", "application/json", 400, "malformed JSON"),
        (b"{}", "text/plain", 415, "expected a JSON body"),
        (b" " * (2 * 1024 * 1024), "application/json", 413, "exceeds the limit"),
    ],
)
async def test_bad_retraction_bodies_get_clear_errors_and_change_nothing(
    platform: tuple[Api, dict[str, str]], data: bytes, content_type: str, status: int, message: str
) -> None:
    api, ids = platform
    headers = {**api.as_("lists:write"), "Content-Type": content_type}
    response = await api.client.post(f"/v1/entries/{ids['listed']}/retract", data=data, headers=headers)
    answer = await response.json()
    assert response.status == status and message in answer["error"], answer
    assert await verdict(api, LISTED) == "exact"


def post(base: str, path: str, token: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"{base}{path}", body, {**bearer(token), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["reason", "opinion", "x", ""]) | st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)


def test_hostile_retractions_never_fail_with_a_server_error(tmp_path: Path) -> None:
    """Any entry id (in the path, percent-encoded) and any JSON body: a clear 4xx or a retraction of
    exactly the entry named; never a 5xx, never another entry retracted."""
    ids = listed_store(tmp_path / "store.db")
    with SQLiteStore(tmp_path / "store.db") as store:
        token, _ = KeyStore(store).create(["lists:write"], name="fuzz", rate_per_second=1e6)
    own = [ids["listed"], ids["other"], ids["fuzzy"]]
    entry_ids = st.sampled_from([*own, ids["imported"]]) | st.text(min_size=1, max_size=140)
    with serving(ApiConfig(db_path=tmp_path / "store.db", crawl_jobs_per_process=0, audit_log=tmp_path / "audit.jsonl")) as base:

        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(entry_id=entry_ids, body=json_values | st.binary(max_size=40))
        def attempt(entry_id: str, body: Any) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            status, answer = post(base, f"/v1/entries/{urllib.parse.quote(entry_id, safe='')}/retract", token, raw)
            assert status in (200, 400, 404, 405, 409), (status, answer)
            if status == 200:
                assert answer["entry_id"] == entry_id in own and answer["status"] == "retracted"
            else:
                assert answer["status"] == status and "\n" not in answer["error"]

        attempt()
    with SQLiteStore(tmp_path / "store.db") as store:
        statuses = {entry.id: entry.status for entry in store.entries_by_id([*own, ids["imported"]]).values()}
    assert statuses[ids["imported"]] == "active"
