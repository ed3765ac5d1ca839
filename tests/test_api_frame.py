"""The API's frame over real HTTP: keys and scopes, rate limits, errors, health, OpenAPI, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from modelsieve.api.http import validation
from modelsieve.api.http.auth import CachedKeys, KeyStore, bearer_token
from modelsieve.api.http.ratelimit import RateLimiter
from modelsieve.api.http.routes import ROUTES
from modelsieve.api.http.state import STORE
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import PUBLIC_KEY
from modelsieve.hashlists.model import StoredApiKey
from modelsieve.hashlists.sqlite_store import SQLiteStore
from modelsieve.hashlists.store import open_store
from tests.api_support import Api, bearer, ready, start_api


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path) -> Api:
    return await start_api(aiohttp_client, tmp_path / "store.db", key_rates={"lists_read": 0.01}, rate_burst=3)


async def test_health_needs_no_key_and_readiness_reports_the_store(api: Api) -> None:
    response = await api.client.get("/v1/healthz")
    assert response.status == 200 and await response.json() == {"status": "ok"}
    for _ in range(200):  # the match index loads in the background: 503 "not ready" until then
        response = await api.client.get("/v1/readyz")
        body = await response.json()
        if response.status == 200:
            break
        assert response.status == 503 and body["status"] == "not ready" and body["checks"]["index"] == "loading"
        await asyncio.sleep(0.05)
    assert response.status == 200 and body == {"status": "ready", "checks": {"store": "ok", "index": "ok"}}


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "API key is required"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "API key is required"),
        ({"Authorization": "Bearer msk_00000000_" + "A" * 43}, 401, "unknown or revoked"),
        ({"Authorization": "Bearer not-a-key"}, 401, "unknown or revoked"),
    ],
)
async def test_a_missing_or_wrong_key_is_401_with_a_challenge(api: Api, headers: dict[str, str], status: int, message: str) -> None:
    response = await api.client.get("/v1/openapi.json", headers=headers)
    body = await response.json()
    assert response.status == status and message in body["error"] and body["status"] == status
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_key_with_a_wrong_secret_is_refused(api: Api) -> None:
    token = api.keys["admin"]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert (await api.client.get("/metrics", headers=bearer(forged))).status == 401


async def test_scopes_decide_403_and_admin_may_do_everything(api: Api) -> None:
    for scope in ("lookup", "crawl", "lists:read", "lists:write"):
        response = await api.client.get("/metrics", headers=api.as_(scope))
        assert response.status == 403
        assert "lacks the 'admin' scope" in (await response.json())["error"]
    assert (await api.client.get("/metrics", headers=api.as_("admin"))).status == 200


async def test_a_revoked_key_stops_working_once_the_key_cache_expires(aiohttp_client: Any, tmp_path: Path) -> None:
    api = await start_api(aiohttp_client, tmp_path / "store.db", key_cache_seconds=0)
    assert (await api.client.get("/v1/openapi.json", headers=api.as_("crawl"))).status == 200
    with open_store(api.db_path) as opened:
        store = KeyStore(opened)
        key_id = api.keys["crawl"].split("_")[1]
        store.revoke(key_id)
        assert (await api.client.get("/v1/openapi.json", headers=api.as_("crawl"))).status == 401
        with pytest.raises(ModelsieveError, match="no live API key"):
            store.revoke(key_id)


async def test_a_key_over_its_rate_gets_429_with_retry_after(api: Api) -> None:
    # the lists:read key refills 0.01 tokens/s: three admitted by the burst, then refused
    statuses = [(await api.client.get("/v1/openapi.json", headers=api.as_("lists:read"))).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = await api.client.get("/v1/openapi.json", headers=api.as_("lists:read"))
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert "rate limit" in (await response.json())["error"]
    # other keys have buckets of their own
    assert (await api.client.get("/v1/openapi.json", headers=api.as_("lookup"))).status == 200


async def test_unknown_routes_and_methods_answer_json_errors(api: Api) -> None:
    response = await api.client.get("/v1/nothing-here", headers=api.as_("admin"))
    assert response.status == 404 and (await response.json())["status"] == 404
    response = await api.client.delete("/v1/healthz")
    assert response.status == 405 and "GET" in response.headers["Allow"]
    assert (await response.json())["status"] == 405


async def test_health_checks_answer_head_and_keyed_routes_do_not(api: Api) -> None:
    await ready(api)
    for path in ("/v1/healthz", "/v1/readyz"):
        response = await api.client.head(path)
        assert response.status == 200 and await response.read() == b""
        assert response.headers["Content-Type"].startswith("application/json")
    response = await api.client.head("/v1/lookup?sha256=" + "0" * 64, headers=api.as_("lookup"))
    assert response.status == 405 and "HEAD" not in response.headers["Allow"]


async def test_a_parameter_on_an_operation_without_any_is_400(api: Api) -> None:
    response = await api.client.get("/v1/openapi.json?x=1", headers=api.as_("lookup"))
    assert response.status == 400 and "takes no parameters" in (await response.json())["error"]


async def test_openapi_document_describes_every_route_and_is_valid_json_schema(api: Api) -> None:
    document = await api.get_json("/v1/openapi.json", "lookup")
    assert document["openapi"].startswith("3.1")
    described = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert described == {(route.method, route.path) for route in ROUTES}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert operation["responses"], path
            for parameter in operation["parameters"]:
                jsonschema_rs.meta.validate(parameter["schema"])
            if "requestBody" in operation:
                for content in operation["requestBody"]["content"].values():
                    jsonschema_rs.meta.validate(content["schema"])
    assert document["paths"]["/v1/healthz"]["get"]["security"] == []
    assert document["paths"]["/metrics"]["get"]["security"] == [{"apiKey": []}]


async def test_every_documented_error_response_is_the_json_error_the_api_sends(api: Api) -> None:
    document = await api.get_json("/v1/openapi.json", "lookup")
    error_schema = {"$ref": "#/components/schemas/Error"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and not (path == "/v1/readyz" and status == "503"):  # not ready: the readiness body
                    assert response["content"] == {"application/json": {"schema": error_schema}}, (method, path, status)
    # what a documented 404 really sends
    response = await api.client.get("/v1/crawl/0123456789abcdef", headers=api.as_("crawl"))
    body = await response.json()
    assert response.status == 404 and response.content_type == "application/json"
    jsonschema_rs.validate(document["components"]["schemas"]["Error"], body)


async def test_metrics_count_requests_by_route_template_and_status(api: Api) -> None:
    await api.client.get("/v1/healthz")
    await api.client.get("/v1/openapi.json")  # 401
    await api.client.get("/v1/no/such/path")
    response = await api.client.get("/metrics", headers=api.as_("admin"))
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'modelsieve_http_requests_total{method="GET",route="/v1/healthz",status="200"} 1.0' in text
    assert 'modelsieve_http_requests_total{method="GET",route="/v1/openapi.json",status="401"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "/v1/no/such/path" not in text
    assert 'modelsieve_http_request_duration_seconds_count{route="/v1/healthz"} 1.0' in text


def test_keys_are_stored_only_as_digests(tmp_path: Path) -> None:
    store = KeyStore(open_store(tmp_path / "keys.db"))
    token, key = store.create(["lookup", "crawl"], name="hub")
    with contextlib.closing(sqlite3.connect(tmp_path / "keys.db")) as db:
        stored = json.dumps([list(row) for row in db.execute("SELECT * FROM api_keys").fetchall()])
    secret = token.split("_", 2)[2]  # the secret is URL-safe base64 and may itself contain "_"
    assert secret not in stored
    assert store.verify(token) == key
    assert key.allows("crawl") and not key.allows("admin") and not key.allows("lists:write")
    with pytest.raises(ModelsieveError, match="scopes must be"):
        store.create(["root"])
    with pytest.raises(ModelsieveError, match="scopes must be"):
        store.create([])


def test_verified_keys_are_cached_for_their_time_only(tmp_path: Path) -> None:
    store = KeyStore(open_store(tmp_path / "keys.db"))
    token, key = store.create(["lookup"])
    now = [0.0]
    cached = CachedKeys(store, seconds=5, clock=lambda: now[0])
    assert cached.verify(token) == key
    store.revoke(key.key_id)
    assert cached.verify(token) == key, "still cached"
    now[0] = 5.0
    assert cached.verify(token) is None
    assert cached.verify("msk_00000000_" + "A" * 43) is None


class CountingKeyStore(KeyStore):
    """The real key store, counting how often a key verifier reads it."""

    reads = 0

    def record(self, key_id: str) -> StoredApiKey | None:
        self.reads += 1
        return super().record(key_id)

    def records(self) -> list[StoredApiKey]:
        self.reads += 1
        return super().records()


def test_invented_tokens_cost_the_store_a_bounded_number_of_reads(tmp_path: Path) -> None:
    store = CountingKeyStore(open_store(tmp_path / "keys.db"))
    token, key = store.create(["lookup"])
    now = [0.0]
    cached = CachedKeys(store, seconds=5, unknown_reads_per_second=10, clock=lambda: now[0])
    assert cached.verify(token) == key and store.reads == 1  # the copy of every key
    invented = [f"msk_{i:08x}_" + "A" * 43 for i in range(1000)]
    assert all(cached.verify(t) is None for t in invented)
    assert store.reads == 1 + 10, "one second's allowance of lookups of unknown ids, then none"
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert cached.verify(forged) is None and cached.verify(token) == key, "a live key never waits for the flood"
    assert store.reads == 11, "a known id is checked against the copy"
    now[0] = 0.5
    assert all(cached.verify(t) is None for t in invented[:100])
    assert store.reads == 11 + 5, "the allowance refills at its rate"


def test_a_key_made_while_the_server_runs_works_at_once_or_after_the_next_copy(tmp_path: Path) -> None:
    store = KeyStore(open_store(tmp_path / "keys.db"))
    now = [0.0]
    cached = CachedKeys(store, seconds=5, unknown_reads_per_second=10, clock=lambda: now[0])
    assert cached.verify("msk_00000000_" + "A" * 43) is None  # the copy is read: no keys yet
    token, key = store.create(["lookup"])
    assert cached.verify(token) == key, "an unknown id is looked up while the allowance lasts"
    assert all(cached.verify(f"msk_{i:08x}_" + "A" * 43) is None for i in range(1, 100))  # allowance spent
    late_token, late_key = store.create(["crawl"])
    assert cached.verify(late_token) is None, "no lookups left this second"
    now[0] = 5.0
    assert cached.verify(late_token) == late_key, "the next copy of every key has it"
    assert cached.verify(token) == key


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Bearer ") is None
    assert bearer_token("Token abc") is None
    assert bearer_token(None) is None


def test_rate_limiter_refills_at_the_key_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2, burst=2, clock=lambda: now[0])
    assert [limiter.check("k") for _ in range(3)] == [0, 0, 1]
    now[0] += 0.5  # one token back at 2/s
    assert limiter.check("k") == 0 and limiter.check("k") == 1
    assert limiter.check("other") == 0
    assert limiter.check("slow", rate=0.1) == 0  # capacity max(burst, rate) = 2
    assert limiter.check("slow", rate=0.1) == 0
    assert limiter.check("slow", rate=0.1) == 10


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(route_index=st.integers(0, len(ROUTES) - 1), instance=json_values)
def test_validators_either_accept_or_raise_a_one_line_400(route_index: int, instance: Any) -> None:
    route = ROUTES[route_index]
    for where, checker in route.validators.items():
        try:
            checker.check(instance, where)
        except web.HTTPException as exc:
            body = json.loads(exc.text or "")
            assert exc.status == 400 and body["status"] == 400
            assert body["error"].startswith(where) and "\n" not in body["error"]
            assert len(body["error"]) < 400


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_body_parsing_never_fails_other_than_with_a_400(raw: bytes) -> None:
    try:
        validation.parse_json(raw)
    except web.HTTPException as exc:
        assert exc.status == 400 and json.loads(exc.text or "")["error"].startswith("body")


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.text(max_size=8), st.text(max_size=12)), max_size=6))
def test_query_parameters_convert_by_schema_and_refuse_repeats(pairs: list[tuple[str, str]]) -> None:
    schema = {"type": "object", "properties": {"since": {"type": "integer"}, "flag": {"type": "boolean"}}}
    names = [name for name, _ in pairs]
    try:
        values = validation.query_values(MultiDict(pairs), schema)
    except web.HTTPException as exc:
        assert exc.status == 400 and len(set(names)) < len(names)
        return
    assert len(set(names)) == len(names)
    for name, raw in pairs:
        if name == "since" and raw.strip().lstrip("+-").isdigit():
            assert values[name] == int(raw)
        elif name not in ("since", "flag"):
            assert values[name] == raw


def test_query_numbers_that_do_not_parse_stay_strings_and_fail_the_schema() -> None:
    schema = {"type": "object", "properties": {"since": {"type": "integer", "minimum": 0}}}
    values = validation.query_values(MultiDict([("since", "ten")]), schema)
    with pytest.raises(web.HTTPException) as caught:
        validation.compile_schema(schema).check(values, "query")
    assert json.loads(caught.value.text or "")["error"] == 'query.since: "ten" is not of type "integer"'



async def test_readiness_fails_once_the_index_cannot_follow_the_store_and_the_log_says_so_once(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica cut off from its store kept answering lookups from an index frozen in time (new
    entries: "none") while readiness said ready, and logged a traceback every second."""
    api = await start_api(aiohttp_client, tmp_path / "store.db", index_refresh_seconds=0.05, index_stale_seconds=0.5, crawl_jobs_per_process=0)
    for _ in range(400):
        if (await api.client.get("/v1/readyz")).status == 200:
            break
        await asyncio.sleep(0.05)
    caplog.set_level(logging.WARNING, logger="modelsieve")
    store = api.client.server.app[STORE]
    store.close()  # the store gone from under the server (a lost database connection)
    for _ in range(200):
        response = await api.client.get("/v1/readyz")
        if response.status == 503:
            break
        await asyncio.sleep(0.05)
    body = await response.json()
    assert response.status == 503 and body["checks"]["index"].startswith("stale: not refreshed for"), body
    await asyncio.sleep(0.5)  # several more failed refreshes
    failures = [r for r in caplog.records if "refresh the match index" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]


async def test_an_index_that_cannot_load_fails_readiness_without_the_error_text(
    aiohttp_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Readiness needs no key, so the load error (which can name the database's host and user, or a
    file) stays in the server log; readiness says only that the load failed."""
    db = tmp_path / "store.db"
    with SQLiteStore(db) as store:
        store.create_list("main", publisher="test")
    with sqlite3.connect(db) as connection:  # a base whose stored fingerprint is damaged
        connection.execute(
            "INSERT INTO fuzzy_bases (name, key_id, key_check, scheme, tensors, source, added, fingerprint) VALUES (?, ?, ?, 1, 1, 'secret-source', '', ?)",
            ("sd15", PUBLIC_KEY.key_id, PUBLIC_KEY.check, b"junk"),
        )
    api = await start_api(aiohttp_client, db, crawl_jobs_per_process=0)
    for _ in range(400):
        response = await api.client.get("/v1/readyz")
        body = await response.json()
        if body["checks"]["index"] != "loading":
            break
        await asyncio.sleep(0.05)
    assert response.status == 503 and body["checks"]["index"] == "failed: FingerprintError (see the server log)", body
    assert "cannot load the match index" in caplog.text and "bad magic" in caplog.text
