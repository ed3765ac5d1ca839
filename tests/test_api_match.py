"""Lookups and matches over real HTTP: by digest, by URL, by client-side fingerprint, by streamed upload."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as save_bytes

from modelsieve.fingerprint.digests import MultiDigest
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_support import Api, ready, start_api
from tests.hashlists_fixtures import lora_arrays, lora_fingerprint

LISTED_SEED = 1
SENSITIVE_NOTE = "Title Naming A Person"


def file_digests(data: bytes) -> dict[str, str]:
    digest = MultiDigest()
    digest.update(data)
    return {name: value for name, value in digest.hexdigests().items() if value}


@pytest.fixture
def listed_file() -> bytes:
    return save_bytes(lora_arrays(LISTED_SEED))


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path, listed_file: bytes) -> Api:
    db_path = tmp_path / "store.db"
    with SQLiteStore(db_path) as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", kind="lora", digests=file_digests(listed_file), source="hotline-x", note=SENSITIVE_NOTE))
        store.add_entry("main", NewEntry(category="nudify-service", url="https://nudify.example.com/app", source="hotline-x"))
        store.add_entry("main", NewEntry(category="nudify-service", domain="undress.co.uk", source="hotline-x"))
        for seed in range(LISTED_SEED, LISTED_SEED + 4):
            store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(seed).to_bytes(), evidence="fuzzy"))
    return await ready(await start_api(aiohttp_client, db_path, fingerprint_body_limit=64 * 1024, upload_limit=256 * 1024))


async def test_lookup_by_any_digest_returns_the_cli_match_objects(api: Api, listed_file: bytes) -> None:
    digests = file_digests(listed_file)
    body = await api.get_json(f"/v1/lookup?sha256={digests['sha256'].upper()}", "lookup")
    assert body["verdict"] == "exact" and body["digests"] == {"sha256": digests["sha256"]}
    [match] = body["matches"]
    assert {k: match[k] for k in ("list", "category", "source", "kind", "score", "status")} == {
        "list": "main", "category": "2c", "source": "hotline-x", "kind": "sha256", "score": 1.0, "status": "active"
    }
    assert match["entry_id"].startswith("e")
    for name in ("blake3", "crc32", "autov2", "autov3"):
        [other] = (await api.get_json(f"/v1/lookup?{name}={digests[name]}", "lookup"))["matches"]
        assert (other["entry_id"], other["kind"]) == (match["entry_id"], name)
    # echoed as modelsieve prints digests whatever case was sent: CRC32 upper-case (Civitai's form), the rest lower
    # a 32-bit CRC32 alone does not identify a file: "near", for a person to review
    for name, sent, verdict in (("crc32", digests["crc32"].lower(), "near"), ("blake3", digests["blake3"].upper(), "exact")):
        echoed = await api.get_json(f"/v1/lookup?{name}={sent}", "lookup")
        assert echoed["digests"] == {name: digests[name]} and echoed["verdict"] == verdict
    assert digests["crc32"] == digests["crc32"].upper() and digests["blake3"] == digests["blake3"].lower()
    civitai = await api.get_json(f"/v1/lookup?autov3={digests['autov3'][:12]}", "lookup")
    assert [m["entry_id"] for m in civitai["matches"]] == [match["entry_id"]]
    missing = await api.get_json(f"/v1/lookup?sha256={'0' * 64}", "lookup")
    assert missing == {"digests": {"sha256": "0" * 64}, "verdict": "none", "matches": []}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sha512=" + "a" * 128, "unknown parameter 'sha512'"),
        ("sha256=abc", "query.sha256"),
        ("sha256=" + "g" * 64, "query.sha256"),
        ("", "query: {} has less than 1 property"),
        ("md5=" + "a" * 32 + "&md5=" + "b" * 32, "given more than once"),
    ],
)
async def test_lookup_refuses_unknown_names_and_malformed_values(api: Api, query: str, message: str) -> None:
    response = await api.client.get(f"/v1/lookup?{query}", headers=api.as_("lookup"))
    body = await response.json()
    assert response.status == 400 and message in body["error"], body


async def test_lookup_needs_the_lookup_scope(api: Api) -> None:
    assert (await api.client.get("/v1/lookup?md5=" + "a" * 32, headers=api.as_("crawl"))).status == 403
    assert (await api.client.get("/v1/lookup?md5=" + "a" * 32)).status == 401


async def test_lookup_by_url_matches_url_and_domain_entries_without_fetching(api: Api) -> None:
    """A delisting job asks about a URL before it crawls anything: listed URL (or a parent path) and
    listed registrable domains match; the URL is only normalised, never fetched (none of these
    hosts exist, and the suite reaches loopback only)."""

    async def lookup_url(url: str) -> dict[str, Any]:
        return await api.get_json("/v1/lookup/url", "lookup", params={"url": url})

    under_path = await lookup_url("HTTPS://Nudify.Example.com/app/upload?x=1")
    assert under_path["url"] == "HTTPS://Nudify.Example.com/app/upload?x=1" and under_path["verdict"] == "exact"
    assert [(m["kind"], m["category"], m["source"]) for m in under_path["matches"]] == [("url", "nudify-service", "hotline-x")]
    subdomain = await lookup_url("https://www.undress.co.uk/")
    assert [(m["kind"], m["category"]) for m in subdomain["matches"]] == [("domain", "nudify-service")]
    for unlisted in ("https://nudify.example.com/other", "https://example.com/app", "https://undress.co.uk.example.org/"):
        assert (await lookup_url(unlisted))["verdict"] == "none", unlisted


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("url=ftp://nudify.example.com/app", 400, "only http and https"),
        ("url=not%20a%20url", 400, "query.url"),
        ("", 400, 'query: "url" is a required property'),
        ("url=https://a.org/&url=https://b.org/", 400, "given more than once"),
        ("url=https://a.org/&sha256=" + "a" * 64, 400, "unknown parameter 'sha256'"),
        ("url=https://a.org/" + "x" * 5000, 400, "query.url"),
    ],
)
async def test_lookup_by_url_refuses_what_is_not_an_http_url(api: Api, query: str, status: int, message: str) -> None:
    response = await api.client.get(f"/v1/lookup/url?{query}", headers=api.as_("lookup"))
    body = await response.json()
    assert response.status == status and message in body["error"], body
    assert (await api.client.get("/v1/lookup/url?url=https://a.org/", headers=api.as_("crawl"))).status == 403


async def test_a_client_side_fingerprint_matches_near_and_an_unrelated_one_does_not(api: Api) -> None:
    resaved = lora_fingerprint(LISTED_SEED, dtype=np.float16).to_json()
    body = await api.post_json("/v1/match/fingerprint", "lookup", {"fingerprint": resaved})
    assert body["verdict"] == "near" and body["fingerprint"]["kind"] == "lora"
    [match] = body["matches"]
    assert match["kind"] == "fuzzy" and match["score"] > 0.9 and match["category"] == "2c"
    unrelated = await api.post_json("/v1/match/fingerprint", "lookup", {"fingerprint": lora_fingerprint(999).to_json()})
    assert unrelated["verdict"] == "none" and unrelated["matches"] == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[]", 400, 'body: [] is not of type "object"'),
        (b'{"fingerprint": "abc"}', 400, 'body.fingerprint: "abc" is not of type "object"'),
        (b'{"fingerprint": {"data": 5}}', 400, "body.fingerprint.data"),
        (b'{"fingerprint": {"data": "QUJD"}, "extra": 1}', 400, "unknown field 'extra'"),
        (b'{"fingerprint": {"data": "not base64!"}}', 422, "base64"),
        (b'{"fingerprint": {"data": "QUJD"}}', 422, "fingerprint"),
        (b'{"fingerprint": {"data": "' + b"A" * 70000 + b'"}}', 413, "exceeds the limit"),
        (b'{"x": NaN}', 400, "NaN is not JSON"),
    ],
)
async def test_bad_fingerprint_bodies_get_clear_errors(api: Api, body: bytes, status: int, message: str) -> None:
    headers = {**api.as_("lookup"), "Content-Type": "application/json"}
    response = await api.client.post("/v1/match/fingerprint", data=body, headers=headers)
    answer = await response.json()
    assert response.status == status and message in answer["error"], answer


async def test_a_non_json_media_type_is_415(api: Api) -> None:
    headers = {**api.as_("lookup"), "Content-Type": "text/plain"}
    response = await api.client.post("/v1/match/fingerprint", data=b"{}", headers=headers)
    assert response.status == 415


async def test_an_uploaded_file_is_hashed_and_fingerprinted_while_it_streams(api: Api, listed_file: bytes) -> None:
    async def chunks(data: bytes) -> Any:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    response = await api.client.post("/v1/match/file", data=chunks(listed_file), headers=api.as_("lookup"))
    body = await response.json()
    assert response.status == 200, body
    assert body["verdict"] == "exact" and body["format"] == "safetensors" and body["fingerprinted"] is True
    assert body["size"] == len(listed_file) and body["digests"]["sha256"] == hashlib.sha256(listed_file).hexdigest()
    # the hash-only entry matches exactly, the fingerprint entry of the same LoRA near
    assert [m["kind"] for m in body["matches"]] == ["sha256", "fuzzy"]
    assert body["matches"][0]["entry_id"] != body["matches"][1]["entry_id"]

    resaved = save_bytes({k: v.astype(np.float16) for k, v in lora_arrays(LISTED_SEED).items()})
    near = await (await api.client.post("/v1/match/file", data=resaved, headers=api.as_("lookup"))).json()
    assert near["verdict"] == "near" and [m["kind"] for m in near["matches"]] == ["fuzzy"]


async def test_an_upload_that_is_no_model_gets_digests_only_and_says_why(api: Api) -> None:
    data = b"\x80\x04this is not a model, and pickles are never parsed"
    body = await (await api.client.post("/v1/match/file", data=data, headers=api.as_("lookup"))).json()
    assert body["verdict"] == "none" and body["format"] == "other" and body["fingerprinted"] is False
    assert body["digests"]["md5"] == hashlib.md5(data).hexdigest()
    assert body["problems"] and body["problems"][0].startswith("not fingerprinted")


async def test_uploads_over_the_cap_or_empty_are_refused(api: Api) -> None:
    response = await api.client.post("/v1/match/file", data=b"x" * (256 * 1024 + 1), headers=api.as_("lookup"))
    assert response.status == 413 and "exceeds the limit" in (await response.json())["error"]

    async def endless() -> Any:  # no Content-Length: the cap is enforced while streaming
        for _ in range(100):
            yield b"y" * 8192

    response = await api.client.post("/v1/match/file", data=endless(), headers=api.as_("lookup"))
    assert response.status == 413
    response = await api.client.post("/v1/match/file", data=b"", headers=api.as_("lookup"))
    assert response.status == 400 and "empty" in (await response.json())["error"]


async def test_matches_are_counted_by_kind_and_audited_without_notes(api: Api, listed_file: bytes) -> None:
    sha256 = hashlib.sha256(listed_file).hexdigest()
    body = await api.get_json(f"/v1/lookup?sha256={sha256}", "lookup")
    await api.post_json("/v1/match/fingerprint", "lookup", {"fingerprint": lora_fingerprint(LISTED_SEED + 1).to_json()})
    await api.get_json(f"/v1/lookup?sha256={'0' * 64}", "lookup")  # no match: nothing to audit
    records = api.audit_lines()
    assert [r["event"] for r in records] == ["match", "match"]
    assert records[0]["matches"][0]["entry_id"] == body["matches"][0]["entry_id"]
    assert records[0]["key"] == api.keys["lookup"].split("_")[1] and records[0]["route"] == "GET /v1/lookup"
    assert records[1]["matches"][0]["kind"] == "fuzzy"
    assert SENSITIVE_NOTE not in json.dumps(records) and SENSITIVE_NOTE not in json.dumps(body)
    metrics = await (await api.client.get("/metrics", headers=api.as_("admin"))).text()
    assert 'modelsieve_matches_total{kind="sha256"} 1.0' in metrics
    assert 'modelsieve_matches_total{kind="fuzzy"} 1.0' in metrics
