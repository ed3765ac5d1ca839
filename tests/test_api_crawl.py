"""Crawl jobs over real HTTP: submit URLs on a loopback file host, page through recommendations."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes

from modelsieve.api.http.crawljobs import CrawlJobs
from modelsieve.crawler.crawl import CrawlConfig
from modelsieve.crawler.job import lock_output
from modelsieve.crawler.lookup import StoreLookup
from modelsieve.fingerprint.fuzzy import PUBLIC_KEY
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_support import Api, bearer, make_keys, ready, start_api
from tests.crawler_fakes import file_host
from tests.hashlists_fixtures import lora_arrays, lora_fingerprint

EXACT = safetensors_bytes(lora_arrays(1))
NEAR = safetensors_bytes({k: v.astype(np.float16) for k, v in lora_arrays(2).items()})
UNLISTED = safetensors_bytes(lora_arrays(3))


def listed_store(path: Path) -> Path:
    with SQLiteStore(path) as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", kind="lora", digests={"sha256": hashlib.sha256(EXACT).hexdigest()}))
        store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(2).to_bytes(), evidence="fuzzy"))
    return path


@pytest.fixture
async def host(aiohttp_server: Any) -> str:
    server = await aiohttp_server(file_host({"exact": EXACT, "near": NEAR, "unlisted": UNLISTED}), host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path) -> Api:
    db = listed_store(tmp_path / "store.db")
    return await ready(await start_api(aiohttp_client, db, crawl_allow_loopback=True, crawl_jobs_dir=tmp_path / "jobs"))


async def submit(api: Api, body: dict[str, Any], scope: str = "crawl") -> dict[str, Any]:
    return await api.post_json("/v1/crawl", scope, body, status=202)


async def collect(api: Api, job_id: str, scope: str = "crawl", limit: int = 2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every recommendation of a job, paged with the cursor while the job runs, and its last status."""
    recommendations: list[dict[str, Any]] = []
    cursor = 0
    for _ in range(600):
        page = await api.get_json(f"/v1/crawl/{job_id}?cursor={cursor}&limit={limit}", scope)
        assert page["cursor"] == cursor and len(page["recommendations"]) <= limit
        recommendations += page["recommendations"]
        cursor = page["next_cursor"]
        if page["status"] in ("done", "failed") and not page["recommendations"]:
            return page, recommendations
        if not page["recommendations"]:
            await asyncio.sleep(0.05)
    raise AssertionError("the crawl job did not finish")


async def test_a_crawl_job_runs_in_the_background_and_pages_its_recommendations(api: Api, host: str) -> None:
    urls = [f"{host}/files/{name}" for name in ("exact", "near", "unlisted", "missing")]
    submitted = await submit(api, {"urls": [*urls[:3], {"url": urls[3], "context": {"page": "https://example.org/p"}}]})
    assert submitted["status"] in ("queued", "running") and submitted["total"] == 4 and submitted["mode"] == "search"
    status, recommendations = await collect(api, submitted["id"])
    assert (status["status"], status["total"], status["done"], status["error"]) == ("done", 4, 4, None)
    by_url = {r["url"]: r for r in recommendations}
    assert sorted(by_url) == sorted(urls) and len(recommendations) == 4, "every URL exactly once"
    exact, near, unlisted, missing = (by_url[u] for u in urls)
    assert exact["action"] == "delist" and exact["evidence"]["matches"][0]["kind"] == "sha256"
    assert near["action"] in ("delist", "review") and near["evidence"]["matches"][0]["kind"] == "fuzzy"
    assert unlisted["action"] == "none" and unlisted["evidence"]["matches"] == []
    assert missing["action"] == "error" and missing["context"] == {"page": "https://example.org/p"}
    metrics = await (await api.client.get("/metrics", headers=api.as_("admin"))).text()
    assert 'modelsieve_crawl_urls_total{action="delist"}' in metrics
    assert 'modelsieve_matches_total{kind="sha256"}' in metrics


async def test_a_job_whose_output_is_not_in_this_servers_folder_is_a_503_that_says_so(api: Api, host: str, tmp_path: Path) -> None:
    """Replicas that run jobs each with a folder of their own: the status route crashed (500)."""
    submitted = await submit(api, {"urls": [f"{host}/files/exact"]})
    await collect(api, submitted["id"])
    shutil.rmtree(tmp_path / "jobs" / submitted["id"])  # as on a replica that never had the folder
    error = await api.get_json(f"/v1/crawl/{submitted['id']}", "crawl", status=503)
    assert "not in this server's crawl-jobs folder" in error["error"] and "--crawl-jobs-dir" in error["error"]


async def test_host_mode_recommends_takedown(api: Api, host: str) -> None:
    submitted = await submit(api, {"urls": [f"{host}/files/exact"], "mode": "host"})
    _, [recommendation] = await collect(api, submitted["id"])
    assert recommendation["action"] == "takedown"


async def test_jobs_are_visible_only_to_their_key_and_to_admins(api: Api, host: str) -> None:
    submitted = await submit(api, {"urls": [f"{host}/files/unlisted"]})
    [other] = [make_keys(api.db_path)["crawl"]]
    response = await api.client.get(f"/v1/crawl/{submitted['id']}", headers=bearer(other))
    assert response.status == 404
    status, _ = await collect(api, submitted["id"], scope="admin")
    assert status["status"] == "done"
    assert (await api.client.get("/v1/crawl/0123456789abcdef", headers=api.as_("crawl"))).status == 404
    assert (await api.client.post("/v1/crawl", json={"urls": ["http://x.test/"]}, headers=api.as_("lookup"))).status == 403


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"urls": []}, "body.urls"),
        ({"urls": "http://x.test/"}, "body.urls"),
        ({"urls": ["ftp://x.test/a"]}, "body.urls[0]: not an http(s) URL"),
        ({"urls": ["http://x.test/a", "not a url"]}, "body.urls[1]"),
        ({"urls": [{"context": {}}]}, "body.urls[0]"),
        ({"urls": ["http://x.test/"], "mode": "delete"}, "body.mode"),
        ({"urls": ["http://x.test/"] * 10_001}, "body.urls"),
    ],
)
async def test_bad_crawl_submissions_are_400(api: Api, body: dict[str, Any], message: str) -> None:
    response = await api.client.post("/v1/crawl", json=body, headers=api.as_("crawl"))
    answer = await response.json()
    assert response.status == 400 and answer["error"].startswith(message), answer


async def test_bad_cursors_and_ids_are_400(api: Api, host: str) -> None:
    submitted = await submit(api, {"urls": [f"{host}/files/unlisted", f"{host}/files/exact"]})
    await collect(api, submitted["id"])
    for query in ("cursor=3", "cursor=-1", "limit=0", "limit=abc", "page=2"):
        response = await api.client.get(f"/v1/crawl/{submitted['id']}?{query}", headers=api.as_("crawl"))
        assert response.status == 400, query
    assert (await api.client.get("/v1/crawl/not-an-id", headers=api.as_("crawl"))).status == 400


async def test_without_the_loopback_allowance_the_crawler_refuses_loopback_hosts(aiohttp_client: Any, tmp_path: Path, host: str) -> None:
    api = await ready(await start_api(aiohttp_client, listed_store(tmp_path / "store.db"), crawl_jobs_dir=tmp_path / "jobs"))
    submitted = await submit(api, {"urls": [f"{host}/files/exact"]})
    _, [recommendation] = await collect(api, submitted["id"])
    assert recommendation["action"] == "error" and "loopback" in recommendation["reason"]


async def test_a_job_whose_output_another_process_still_writes_waits_for_it_and_is_not_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica claims a job whose lease lapsed while its first runner still writes the output (the
    output's lock says so): it neither crashed its task nor ended the job; once the lock is free, a
    later claim resumes the job to its end. A job whose input is gone ends as failed, with the reason."""
    with SQLiteStore(tmp_path / "store.db") as store:
        jobs = CrawlJobs(store, tmp_path / "jobs")
        lookup = StoreLookup(Matcher.for_store(store, PUBLIC_KEY))
        targets = [{"url": f"http://127.0.0.1:9/m{i}.safetensors"} for i in range(3)]  # loopback: refused, no traffic
        submitted = jobs.submit("k1", targets, "search")
        record = jobs.claim()
        assert record is not None and record.id == submitted.id
        out = jobs.folder(record.id) / "recommendations.jsonl"
        held = lock_output(out, create=False)  # the first runner, still writing
        await jobs.run(record, CrawlConfig(), lookup, lambda recommendation: None)
        assert "another crawl is writing" in caplog.text
        assert jobs.get(record.id).finished_at is None and out.read_bytes() == b""  # not ended, not written twice
        held.close()
        store.end_crawl_lease(record.id, jobs.owner, finished_at=None)  # this lease lapses
        again = jobs.claim()
        assert again is not None and again.id == record.id
        await jobs.run(again, CrawlConfig(), lookup, lambda recommendation: None)
        finished = jobs.get(record.id)
        assert finished.finished_at is not None and finished.error is None
        assert jobs.progress(finished) == (3, 3)

        gone = jobs.submit("k1", targets, "search")
        (jobs.folder(gone.id) / "input.jsonl").unlink()
        claimed = jobs.claim()
        assert claimed is not None and claimed.id == gone.id
        await jobs.run(claimed, CrawlConfig(), lookup, lambda recommendation: None)
        assert jobs.get(gone.id).finished_at is not None and "input.jsonl" in jobs.get(gone.id).error
