"""Schemathesis fuzzes every operation of the live API from its own /v1/openapi.json: no 5xx, ever."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import response_schema_conformance

from modelsieve.api.http import ApiConfig
from modelsieve.api.http.auth import KeyStore
from modelsieve.api.http.routes import ROUTES
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.signing import generate_key_files
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_server_thread import serving
from tests.api_support import bearer
from tests.hashlists_fixtures import lora_fingerprint

EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder: Path = tmp_path_factory.mktemp("schemathesis")
    db_path = folder / "store.db"
    with SQLiteStore(db_path) as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(1).to_bytes(), evidence="fuzzy"))
    generate_key_files(folder / "platform-a.key", folder / "platform-a.pub")
    with SQLiteStore(db_path) as store:
        token, _ = KeyStore(store).create(["admin"], name="schemathesis", rate_per_second=1e6)
    # crawl jobs are stored but never run here: fuzzed URLs must never be fetched
    config = ApiConfig(db_path=db_path, publisher_key_path=folder / "platform-a.key", crawl_jobs_per_process=0)
    with serving(config) as base:
        yield base, token


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_operation_answers_with_a_server_error(live_api: tuple[str, str], mode: GenerationMode) -> None:
    base, token = live_api
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json", headers=bearer(token), timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    # schemathesis leaves out the document it was loaded from; every other route is fuzzed
    assert {(o.method.upper(), o.path) for o in operations} == {(r.method, r.path) for r in ROUTES if r.path != "/v1/openapi.json"}
    if mode is GenerationMode.NEGATIVE:  # only input can be made invalid
        operations = [o for o in operations if len(o.query) or len(o.path_parameters) or o.body]
        assert len(operations) >= 6
    for operation in operations:

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def call(case: Any) -> None:
            response = case.call(headers=bearer(token), timeout=10)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            if mode is GenerationMode.POSITIVE:
                case.validate_response(response, checks=[response_schema_conformance])

        call()
