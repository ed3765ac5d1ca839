"""Crawl jobs: submit URLs, then page through their recommendations while the job runs."""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web

from modelsieve.api.http.audit import audit, audit_matches
from modelsieve.api.http.errors import api_error
from modelsieve.api.http.routing import Call, Response, Route
from modelsieve.api.http.schemas import CRAWL_BODY, CRAWL_JOB, CRAWL_PATH, CRAWL_QUERY, CRAWL_SUBMITTED
from modelsieve.api.http.state import CRAWL_JOBS, JOB_RUNNER
from modelsieve.crawler.inputs import check_target_url


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
            call.app[CRAWL_JOBS].submit, call.key.key_id, targets, call.body.get("mode", "search"), stopped=stop.is_set
        )
    except asyncio.CancelledError:
        stop.set()
        raise
    call.app[JOB_RUNNER].wake()
    audit(call, "crawl", job=record.id, urls=len(targets), mode=record.mode)
    return web.json_response(
        {"id": record.id, "status": record.status(time.time()), "mode": record.mode, "total": len(targets)}, status=202
    )


async def crawl_status(call: Call) -> web.Response:
    """The job's status and a page of its recommendations (each with its evidence)."""
    jobs = call.app[CRAWL_JOBS]
    record = jobs.get(call.path["id"])
    assert call.key is not None
    if record is None or not (record.key_id == call.key.key_id or "admin" in call.key.scopes):
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


ROUTES = (
    Route(
        "POST",
        "/v1/crawl",
        submit_crawl,
        "submit URLs to check; returns a job id at once (202)",
        "crawl",
        "crawl",
        {202: Response("the job, queued", CRAWL_SUBMITTED)},
        body=CRAWL_BODY,
        description="mode `search` recommends delisting, `host` takedown. Only the submitting key (or an admin "
        "key) can read the job.",
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
