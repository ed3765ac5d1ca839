"""List exchange over real HTTP between two running instances: bundles out and in, retractions,
refusals, and opinions (dispute / confirm) on entries."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from modelsieve.hashlists.bundles import export_opinions
from modelsieve.hashlists.curation import dispute, retract
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.signing import generate_key_files, load_private_key
from modelsieve.hashlists.sqlite_store import SQLiteStore
from modelsieve.hashlists.trust import trust_publisher
from tests.api_support import Api, ready, start_api
from tests.hashlists_fixtures import lora_fingerprint

LISTED = hashlib.sha256(b"a listed model file").hexdigest()
OTHER = hashlib.sha256(b"another listed model file").hexdigest()


async def eventually(check: Any, timeout: float = 10.0) -> None:
    """Poll an async condition (the matcher refreshes from the event log about once a second)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.1)


@pytest.fixture
async def platforms(aiohttp_client: Any, tmp_path: Path) -> tuple[Api, Api, dict[str, str]]:
    """Platform A publishes list "main" (signing key configured); platform B trusts A."""
    generate_key_files(tmp_path / "a.key", tmp_path / "a.pub")
    ids = {}
    with SQLiteStore(tmp_path / "a.db") as store:
        store.create_list("main", publisher="platform-a")
        for name, digest in (("listed", LISTED), ("other", OTHER)):
            entry = store.add_entry("main", NewEntry(category="2c", digests={"sha256": digest}, note="sensitive title"))
            ids[name] = entry.id
        store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(1).to_bytes(), evidence="fuzzy"))
    with SQLiteStore(tmp_path / "b.db") as store:
        trust_publisher(store, "platform-a", (tmp_path / "a.pub").read_text(), "full")
    a = await ready(await start_api(aiohttp_client, tmp_path / "a.db", publisher_key_path=tmp_path / "a.key"))
    b = await ready(await start_api(aiohttp_client, tmp_path / "b.db"))
    return a, b, ids


async def export(api: Api, since: int = 0) -> bytes:
    response = await api.client.get(f"/v1/lists/main/bundle?since={since}", headers=api.as_("lists:read"))
    assert response.status == 200, await response.text()
    assert response.content_type == "application/x-ndjson"
    body = await response.read()
    assert len(body) == response.content_length
    return body


async def import_into(api: Api, bundle: bytes, status: int = 200) -> dict[str, Any]:
    response = await api.client.post("/v1/lists/main/bundle", data=bundle, headers=api.as_("lists:write"))
    body = await response.json()
    assert response.status == status, body
    return body


async def lookup(api: Api, sha256: str) -> dict[str, Any]:
    return await api.get_json(f"/v1/lookup?sha256={sha256}", "lookup")


async def test_a_bundle_round_trip_carries_entries_and_then_their_retraction(platforms: tuple[Api, Api, dict[str, str]], tmp_path: Path) -> None:
    a, b, ids = platforms
    assert (await lookup(b, LISTED))["verdict"] == "none"
    first = await export(a)
    assert b"sensitive title" not in first, "notes never leave in bundles"
    report = await import_into(b, first)
    assert (report["publisher"], report["entries"], report["tombstones"]) == ("platform-a", 3, 0)
    await eventually(lambda: _verdict_is(b, LISTED, "exact"))
    [match] = (await lookup(b, LISTED))["matches"]
    assert (match["entry_id"], match["origin"]) == (ids["listed"], "platform-a")

    with SQLiteStore(tmp_path / "a.db") as store:
        retract(store, ids["listed"], reason="false positive")
    delta = await export(a, since=report["to_seq"])
    second = await import_into(b, delta)
    assert (second["entries"], second["tombstones"], second["from_seq"]) == (0, 1, report["to_seq"])
    await eventually(lambda: _verdict_is(b, LISTED, "none"))
    assert (await lookup(b, OTHER))["verdict"] == "exact", "only the retracted entry stops matching"


async def _verdict_is(api: Api, sha256: str, verdict: str) -> bool:
    return (await lookup(api, sha256))["verdict"] == verdict


async def test_an_export_is_answered_whole_and_keeps_its_connection(
    platforms: tuple[Api, Api, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    """The route returned a FileResponse of a spooled file it had already deleted: aiohttp prepares a
    returned FileResponse again, so every export logged an unhandled error and dropped its keep-alive
    connection, and the client's next request on it sometimes failed ("Server disconnected")."""
    a, _, _ = platforms
    caplog.set_level(logging.ERROR)
    first = await export(a)
    for _ in range(3):
        await asyncio.sleep(0.05)  # the server's work after the handler returned
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    again = await export(a)
    # the same bundle again; only the manifest's `created` time (and so the signature) may differ
    assert again.split(b"\n", 2)[2] == first.split(b"\n", 2)[2]
    assert {**json.loads(again.split(b"\n")[0]), "created": None} == {**json.loads(first.split(b"\n")[0]), "created": None}


async def test_replayed_tampered_and_foreign_bundles_are_refused_and_change_nothing(platforms: tuple[Api, Api, dict[str, str]]) -> None:
    a, b, _ = platforms
    bundle = await export(a)
    tampered = bundle.replace(LISTED.encode(), LISTED[:-1].encode() + (b"0" if LISTED[-1] != "0" else b"1"))
    assert tampered != bundle
    refused = await import_into(b, tampered, status=422)
    assert "payload" in refused["error"] or "signature" in refused["error"] or "hash" in refused["error"]
    assert (await lookup(b, LISTED))["verdict"] == "none"
    await import_into(b, bundle)
    replay = await import_into(b, bundle, status=422)
    assert "already" in replay["error"] or "replay" in replay["error"]
    response = await b.client.post("/v1/lists/elsewhere/bundle", data=bundle, headers=b.as_("lists:write"))
    assert response.status == 400 and "is for list 'main'" in (await response.json())["error"]
    response = await b.client.post("/v1/lists/main/bundle", data=b"not a bundle\n", headers=b.as_("lists:write"))
    assert response.status == 422


async def test_bundle_routes_check_scopes_lists_and_parameters(platforms: tuple[Api, Api, dict[str, str]]) -> None:
    a, b, _ = platforms
    assert (await a.client.get("/v1/lists/main/bundle", headers=a.as_("lookup"))).status == 403
    assert (await a.client.post("/v1/lists/main/bundle", data=b"x", headers=a.as_("lists:read"))).status == 403
    response = await a.client.get("/v1/lists/nosuch/bundle", headers=a.as_("lists:read"))
    assert response.status == 404
    for query, message in (("since=-1", "query.since"), ("since=abc", "query.since"), ("until=5", "unknown parameter 'until'")):
        response = await a.client.get(f"/v1/lists/main/bundle?{query}", headers=a.as_("lists:read"))
        assert response.status == 400 and message in (await response.json())["error"]
    response = await b.client.get("/v1/lists/main/bundle", headers=b.as_("lists:read"))
    assert response.status == 409 and "publisher key" in (await response.json())["error"]


async def test_opinions_dispute_and_confirm_an_imported_entry(platforms: tuple[Api, Api, dict[str, str]]) -> None:
    a, b, ids = platforms
    await import_into(b, await export(a))
    entry = ids["listed"]
    disputed = await b.post_json(f"/v1/entries/{entry}/opinion", "lists:write", {"opinion": "dispute", "reason": "benign"})
    assert disputed == {"entry_id": entry, "opinion": "dispute", "status": "disputed"}
    await eventually(lambda: _status_is(b, "disputed"))
    confirmed = await b.post_json(f"/v1/entries/{entry}/opinion", "lists:write", {"opinion": "confirm"})
    assert confirmed["status"] == "active"
    writes = [(r["event"], r.get("entry_id")) for r in b.audit_lines() if r["event"] != "match"]
    assert writes == [("export", None), ("import", None), ("opinion", entry), ("opinion", entry)]  # A's and B's, one file
    assert "benign" not in json.dumps(b.audit_lines()), "reasons are free text: never logged"
    await b.post_json("/v1/entries/e000000000000000000000000/opinion", "lists:write", {"opinion": "dispute"}, status=404)
    for body in ({"opinion": "maybe"}, {}, {"opinion": "dispute", "reason": 5}, {"opinion": "dispute", "x": 1}):
        response = await b.client.post(f"/v1/entries/{entry}/opinion", json=body, headers=b.as_("lists:write"))
        assert response.status == 400, body
    assert (await b.client.post(f"/v1/entries/{entry}/opinion", json={"opinion": "dispute"}, headers=b.as_("lookup"))).status == 403


async def _status_is(api: Api, status: str) -> bool:
    matches = (await lookup(api, LISTED))["matches"]
    return bool(matches) and matches[0]["status"] == status


async def test_a_retracted_entry_cannot_be_disputed(platforms: tuple[Api, Api, dict[str, str]], tmp_path: Path) -> None:
    a, _, ids = platforms
    with SQLiteStore(tmp_path / "a.db") as store:
        retract(store, ids["other"])
    response = await a.client.post(f"/v1/entries/{ids['other']}/opinion", json={"opinion": "dispute"}, headers=a.as_("lists:write"))
    assert response.status == 409 and "retracted" in (await response.json())["error"]


async def test_an_opinions_bundle_sent_to_a_lists_route_is_refused_with_the_command_that_takes_it(
    platforms: tuple[Api, Api, dict[str, str]], tmp_path: Path
) -> None:
    """An opinions bundle belongs to no list (its manifest's list is null): the route used to answer
    "the bundle is for list None", which sends the sender looking for a list."""
    a, b, ids = platforms
    await import_into(b, await export(a))
    generate_key_files(tmp_path / "b.key", tmp_path / "b.pub")
    with SQLiteStore(tmp_path / "b.db") as store:
        dispute(store, ids["listed"], reason="our own model, a false positive", by="platform-b")
        export_opinions(store, "platform-a", load_private_key(tmp_path / "b.key"), tmp_path / "opinions.jsonl", as_name="platform-b")
    response = await a.client.post("/v1/lists/main/bundle", data=(tmp_path / "opinions.jsonl").read_bytes(), headers=a.as_("lists:write"))
    error = (await response.json())["error"]
    assert response.status == 400 and "bundle of opinions" in error and "modelsieve list import" in error
    assert (await lookup(a, LISTED))["matches"][0]["status"] == "active", "nothing applied"
