"""Managing API crawl jobs: listing a key's jobs, cancelling them, and the per-key limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from modelsieve.api.http.crawljobs import CrawlJobs
from modelsieve.crawler.crawl import CrawlConfig
from modelsieve.crawler.lookup import StoreLookup
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.fingerprint.fuzzy import PUBLIC_KEY
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_support import Api, ready, start_api
from tests.crawler_fakes import file_host, synthetic_safetensors
from tests.test_api_crawl import listed_store

URLS = [f"https://files.example.org/m{i}.safetensors" for i in range(3)]


@pytest.fixture
async def idle_api(aiohttp_client: Any, tmp_path: Path) -> Api:
    """A server that stores jobs but runs none (another process would): they stay queued."""
    db = listed_store(tmp_path / "store.db")
    return await ready(await start_api(aiohttp_client, db, crawl_jobs_per_process=0, crawl_jobs_per_key=3, crawl_jobs_dir=tmp_path / "jobs"))


async def submitted(api: Api, scope: str = "crawl") -> str:
    answer = await api.post_json("/v1/crawl", scope, {"urls": URLS}, status=202)
    assert answer["status"] == "queued"
    return str(answer["id"])


async def test_a_key_lists_its_own_jobs_newest_first_in_pages_and_an_admin_lists_all(idle_api: Api) -> None:
    mine = [await submitted(idle_api) for _ in range(3)]
    theirs = await submitted(idle_api, "admin")
    page = await idle_api.get_json("/v1/crawl?limit=2", "crawl")
    assert [job["id"] for job in page["jobs"]] == [mine[2], mine[1]] and page["next_cursor"] == mine[1]
    first = page["jobs"][0]
    assert first["status"] == "queued" and first["total"] == 3 and first["done"] == 0 and first["finished_at"] is None
    assert first["mode"] == "search" and first["error"] is None and first["created_at"].endswith("Z")
    page = await idle_api.get_json(f"/v1/crawl?limit=2&cursor={page['next_cursor']}", "crawl")
    assert [job["id"] for job in page["jobs"]] == [mine[0]] and page["next_cursor"] is None
    everything = await idle_api.get_json("/v1/crawl", "admin")
    assert [job["id"] for job in everything["jobs"]] == [theirs, *reversed(mine)]
    refused = await idle_api.get_json(f"/v1/crawl?cursor={theirs}", "crawl", status=400)
    assert "no crawl job" in refused["error"], "another key's job is no cursor for this key"
    assert (await idle_api.client.get("/v1/crawl", headers=idle_api.as_("lookup"))).status == 403


async def test_a_queued_job_cancelled_never_runs_and_says_so(idle_api: Api) -> None:
    job = await submitted(idle_api)
    cancelled = await idle_api.post_json(f"/v1/crawl/{job}/cancel", "crawl", None)
    assert cancelled["id"] == job and cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    status = await idle_api.get_json(f"/v1/crawl/{job}", "crawl")
    assert status["status"] == "cancelled" and status["recommendations"] == []
    again = await idle_api.post_json(f"/v1/crawl/{job}/cancel", "crawl", None, status=409)
    assert "already ended (cancelled)" in again["error"]
    others = await submitted(idle_api, "admin")
    assert (await idle_api.post_json(f"/v1/crawl/{others}/cancel", "crawl", None, status=404))["status"] == 404
    with SQLiteStore(idle_api.db_path) as store:
        claimed = CrawlJobs(store, idle_api.db_path.parent / "jobs").claim()
        assert claimed is not None and claimed.id == others, "only the job not cancelled is left to run"
    assert any(line["event"] == "crawl-cancel" and line["job"] == job for line in idle_api.audit_lines())


async def test_a_key_with_as_many_unfinished_jobs_as_it_may_gets_429_until_one_ends(idle_api: Api) -> None:
    jobs = [await submitted(idle_api) for _ in range(3)]
    response = await idle_api.client.post("/v1/crawl", headers=idle_api.as_("crawl"), json={"urls": URLS})
    assert response.status == 429 and response.headers["Retry-After"] == "10"
    assert "3 crawl jobs queued or running" in (await response.json())["error"]
    await submitted(idle_api, "admin")  # other keys are not held up
    await idle_api.post_json(f"/v1/crawl/{jobs[0]}/cancel", "crawl", None)
    await submitted(idle_api)


async def test_cancelling_a_running_job_stops_its_runner_and_keeps_what_it_wrote(aiohttp_server: Any, tmp_path: Path) -> None:
    """A real crawl of a slow loopback host: once cancelled, the runner stops at its next lease
    renewal, well before the URLs run out; the job stays cancelled (the runner does not mark it done)."""
    server = await aiohttp_server(file_host({"m.safetensors": synthetic_safetensors()}, delay=0.2), host="127.0.0.1")
    urls = [{"url": f"http://127.0.0.1:{server.port}/files/m.safetensors?copy={i}"} for i in range(200)]
    with SQLiteStore(listed_store(tmp_path / "store.db")) as store:
        jobs = CrawlJobs(store, tmp_path / "jobs", renew_seconds=0.05)
        lookup = StoreLookup(Matcher.for_store(store, PUBLIC_KEY))
        job = jobs.submit("k1", urls, "search")
        record = jobs.claim()
        assert record is not None and record.id == job.id
        written: list[str] = []

        def cancel_after_two(recommendation: Any) -> None:
            written.append(recommendation.url)
            if len(written) == 2:
                assert jobs.cancel(job.id)

        config = CrawlConfig(addresses=AddressPolicy(allow_loopback=True))
        await asyncio.wait_for(jobs.run(record, config, lookup, cancel_after_two), timeout=30)
        ended = jobs.get(job.id)
        assert ended is not None and ended.status(0) == "cancelled" and ended.error is None
        total, done = jobs.progress(ended)
        assert total == 200 and 2 <= done < 50, "stopped soon after the cancellation"
        lines = (jobs.folder(job.id) / "recommendations.jsonl").read_text().splitlines()
        assert len(lines) == done, "every recommendation written is kept and counted"
        assert jobs.claim() is None and not jobs.cancel(job.id)
