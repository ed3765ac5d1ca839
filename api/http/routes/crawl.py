"""Crawl jobs: submit URLs, page through their recommendations while the job runs, list and cancel jobs."""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web

from typing import Any

from modelsieve.api.http.audit import audit, audit_matches
from modelsieve.api.http.crawljobs import CrawlJobs, TooManyJobsError
from modelsieve.api.http.errors import api_error
from modelsieve.api.http.routing import Call, Response, Route
from modelsieve.api.http.schemas import (
    CRAWL_BODY,
    CRAWL_JOB,
    CRAWL_JOB_LIST,
    CRAWL_LIST_QUERY,
    CRAWL_PATH,
    CRAWL_QUERY,
    CRAWL_SUBMITTED,
    JOB_SUMMARY,
)
from modelsieve.api.http.state import CONFIG, CRAWL_JOBS, JOB_RUNNER
from modelsieve.crawler.inputs import check_target_url
from modelsieve.hashlists.model import LeasedCrawlJob, utc_time


async def submit_crawl(call: Call) -> web.Response:
    """Store a crawl job of the given URLs; a server process runs it in the background."""
    targets = []
    for index, item in enumerate(call.body["urls"]):
        target = {"url": item} if isinstance(item, str) else dict(item)
        try:
            target["url"] = check_target_url(target["url"])
        except ValueError as exc:
            raise api_error(400, f"body.urls[{index}]: {exc}") from None
        targets.append(target)
    assert call.key is not None
    # a store write (and the job's files): on a thread, so waiting for the store (a bundle import) never stalls the loop;
    # a request timed out meanwhile (answered 503: retry) stops it before it commits
    stop = threading.Event()
    try:
        record = await asyncio.to_thread(
            call.app[CRAWL_JOBS].submit, call.key.key_id, targets, call.body.get("mode", "search"),
            max_unfinished=call.app[CONFIG].crawl_jobs_per_key, stopped=stop.is_set,
        )
    except asyncio.CancelledError:
        stop.set()
        raise
    except TooManyJobsError as exc:
        raise api_error(429, str(exc), headers={"Retry-After": "10"}) from None
    call.app[JOB_RUNNER].wake()
    audit(call, "crawl", job=record.id, urls=len(targets), mode=record.mode)
    return web.json_response(
        {"id": record.id, "status": record.status(time.time()), "mode": record.mode, "total": len(targets)}, status=202
    )


async def crawl_status(call: Call) -> web.Response:
    """The job's status and a page of its recommendations (each with its evidence)."""
    jobs = call.app[CRAWL_JOBS]
    record = _callers_job(call, call.path["id"])
    if record is None:
        raise api_error(404, f"no crawl job {call.path['id']} for this key")
    cursor = call.query.get("cursor", 0)
    try:
        recommendations, next_cursor = jobs.page(record, cursor, call.query.get("limit", 100))
    except ValueError as exc:
        raise api_error(400, f"query.cursor: {exc}") from None
    except FileNotFoundError:  # replicas that run jobs each with a folder of their own
        raise api_error(503, f"crawl job {record.id}'s output is not in this server's crawl-jobs folder: "
                             "replicas need one shared --crawl-jobs-dir") from None
    total, done = jobs.progress(record)
    for recommendation in recommendations:
        audit_matches(call, recommendation["evidence"]["matches"], job=record.id, action=recommendation["action"])
    return web.json_response(
        {
            "id": record.id,
            "status": record.status(time.time()),
            "mode": record.mode,
            "total": total,
            "done": done,
            "error": record.error,
            "recommendations": recommendations,
            "cursor": cursor,
            "next_cursor": next_cursor,
        }
    )


async def list_crawl_jobs(call: Call) -> web.Response:
    """The caller's crawl jobs (an admin key: every key's), newest first, with their progress."""
    assert call.key is not None
    before = None
    if "cursor" in call.query:
        last = _callers_job(call, call.query["cursor"])
        if last is None:
            raise api_error(400, f"query.cursor: no crawl job {call.query['cursor']} for this key")
        before = (last.created_at, last.id)
    key_id = None if "admin" in call.key.scopes else call.key.key_id
    limit = call.query.get("limit", 20)
    summaries = await asyncio.to_thread(_summaries, call.app[CRAWL_JOBS], key_id, before, limit)
    return web.json_response({"jobs": summaries, "next_cursor": summaries[-1]["id"] if len(summaries) == limit else None})


async def cancel_crawl(call: Call) -> web.Response:
    """Cancel a queued or running job: it stops within seconds; what it recommended so far stays readable."""
    jobs = call.app[CRAWL_JOBS]
    record = _callers_job(call, call.path["id"])
    if record is None:
        raise api_error(404, f"no crawl job {call.path['id']} for this key")
    if not await asyncio.to_thread(jobs.cancel, record.id):
        ended = jobs.get(record.id)
        raise api_error(409, f"crawl job {record.id} has already ended ({ended.status(time.time()) if ended else 'gone'})")
    audit(call, "crawl-cancel", job=record.id)
    cancelled = jobs.get(record.id)
    assert cancelled is not None
    return web.json_response(await asyncio.to_thread(_summary, jobs, cancelled, time.time()))


def _callers_job(call: Call, job_id: str) -> LeasedCrawlJob | None:
    """The job with this id when the caller submitted it or holds an admin key, else None."""
    record = call.app[CRAWL_JOBS].get(job_id)
    assert call.key is not None
    if record is None or not (record.key_id == call.key.key_id or "admin" in call.key.scopes):
        return None
    return record


def _summaries(jobs: CrawlJobs, key_id: str | None, before: tuple[float, str] | None, limit: int) -> list[dict[str, Any]]:
    now = time.time()
    return [_summary(jobs, record, now) for record in jobs.recent(key_id, before=before, limit=limit)]


def _summary(jobs: CrawlJobs, record: LeasedCrawlJob, now: float) -> dict[str, Any]:
    total, done = jobs.progress(record)
    return {
        "id": record.id,
        "key_id": record.key_id,
        "status": record.status(now),
        "mode": record.mode,
        "created_at": utc_time(record.created_at),
        "finished_at": utc_time(record.finished_at) if record.finished_at is not None else None,
        "total": total,
        "done": done,
        "error": record.error,
    }


ROUTES = (
    Route(
        "POST",
        "/v1/crawl",
        submit_crawl,
        "submit URLs to check; returns a job id at once (202)",
        "crawl",
        "crawl",
        {202: Response("the job, queued", CRAWL_SUBMITTED),
         429: Response("this key has as many jobs queued or running as it may (or is over its rate)")},
        body=CRAWL_BODY,
        description="mode `search` recommends delisting, `host` takedown. Only the submitting key (or an admin "
        "key) can read the job. A key may have `crawl_jobs_per_key` jobs queued or running at once.",
    ),
    Route(
        "GET",
        "/v1/crawl",
        list_crawl_jobs,
        "the caller's crawl jobs, newest first, with status and progress",
        "crawl",
        "crawl",
        {200: Response("one page of jobs", CRAWL_JOB_LIST)},
        query=CRAWL_LIST_QUERY,
        description="An admin key sees every key's jobs. Pass `next_cursor` back as `cursor` for the next page; "
        "it is null on the last one.",
        operation_id="list_crawl_jobs",
    ),
    Route(
        "POST",
        "/v1/crawl/{id}/cancel",
        cancel_crawl,
        "cancel a queued or running crawl job",
        "crawl",
        "crawl",
        {200: Response("the job, cancelled", JOB_SUMMARY), 404: Response("no such job for this key"),
         409: Response("the job has already ended")},
        path_params=CRAWL_PATH,
        description="A queued job never starts; a running one stops within about ten seconds (when its server "
        "next renews its lease). The recommendations written until then stay readable.",
        operation_id="cancel_crawl",
    ),
    Route(
        "GET",
        "/v1/crawl/{id}",
        crawl_status,
        "a crawl job's status and recommendations, paged by cursor",
        "crawl",
        "crawl",
        {200: Response("status and one page of recommendations", CRAWL_JOB), 404: Response("no such job for this key")},
        query=CRAWL_QUERY,
        path_params=CRAWL_PATH,
        description="Start with no cursor; pass `next_cursor` back for the next page. While the job runs, a page "
        "may be short or empty: poll again with the same cursor.",
    ),
)
