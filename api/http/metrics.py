"""Prometheus metrics of one API server: requests, latencies, matches by kind, crawl progress.

With several worker processes (`modelsieve serve --workers N`) the serve command points
PROMETHEUS_MULTIPROC_DIR at a private folder before the workers start; each worker then writes
its values there and any worker's `/metrics` answers with the sum over all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The metric families of one application, in a registry of its own (apps never share)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelsieve_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "modelsieve_http_request_duration_seconds",
            "time from request to response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.matches = Counter(
            "modelsieve_matches", "list matches returned, by kind (digest name, fuzzy, url, domain)", ["kind"], registry=self.registry
        )
        self.crawl_urls = Counter(
            "modelsieve_crawl_urls", "crawled URLs finished, by recommended action", ["action"], registry=self.registry
        )
        self.crawl_jobs = Gauge(
            "modelsieve_crawl_jobs_running", "crawl jobs running in this server", registry=self.registry, multiprocess_mode="livesum"
        )

    def exposition(self) -> bytes:
        """The text format of every metric (summed over worker processes in multi-process mode)."""
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def middleware(self) -> Middleware:
        """Count and time every request by its route template (never by raw path: bounded labels)."""

        @web.middleware
        async def observe(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                resource = request.match_info.route.resource
                route = resource.canonical if resource is not None else "unmatched"
                self.requests.labels(request.method, route, str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - started)

        return observe


def metrics_response(metrics: Metrics) -> web.Response:
    """The metrics in Prometheus text exposition format."""
    response = web.Response(body=metrics.exposition())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response
