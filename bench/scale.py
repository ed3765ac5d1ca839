"""Scale-out benchmark, loopback only: the crawl in one process vs on a 2-worker Dask LocalCluster.

    nice -n 19 python bench/scale.py [--urls 50000] [--hosts 8] [--per-host 2]

A file host in its own process listens on `--hosts` loopback addresses (127.0.0.1, 127.0.0.2, ...;
each its own registrable "domain") and serves under every URL a small safetensors file (one
Range request answers a verdict: header, digests, URL and digest lookups in a real store). It
counts requests in flight per address and reports the highest count seen, which must stay within
the crawler's per-host limit in both runs (in the cluster run because every URL of a host lands
in one partition). Printed: URLs/s single process, URLs/s with --workers 2 (cluster start-up
excluded, reported apart), and the highest per-host concurrency seen.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from safetensors.numpy import save

from modelsieve.crawler.cluster import dask_client
from modelsieve.crawler.crawl import CrawlConfig, Crawler
from modelsieve.crawler.lookup import StoreLookup
from modelsieve.crawler.model import CrawlTarget
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.partitioned import run_partitioned_crawl
from modelsieve.crawler.politeness import PolitenessConfig
from modelsieve.fingerprint.fuzzy import PUBLIC_KEY
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.store import open_store

FILE = save({"unrelated.embedding.weight": np.arange(256, dtype=np.float32).reshape(16, 16)})


def serve(addresses: list[str], pipe: multiprocessing.connection.Connection) -> None:
    """The file host (child process): sends {address: port}, then serves until killed."""
    in_flight: Counter[str] = Counter()
    highest: Counter[str] = Counter()

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        host = request.host.rsplit(":", 1)[0]
        in_flight[host] += 1
        highest[host] = max(highest[host], in_flight[host])
        try:
            await asyncio.sleep(0.001)  # a request takes a little while, so concurrency can show
            return await handler(request)
        finally:
            in_flight[host] -= 1

    async def robots(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def file(request: web.Request) -> web.Response:
        first, _, last = request.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
        end = min(int(last or len(FILE) - 1), len(FILE) - 1)
        body = FILE[int(first) : end + 1]
        headers = {"Content-Range": f"bytes {first}-{end}/{len(FILE)}", "Accept-Ranges": "bytes"}
        return web.Response(status=206, body=body, headers=headers, content_type="application/octet-stream")

    async def stats(request: web.Request) -> web.Response:
        result = dict(highest)
        if request.query.get("reset"):
            highest.clear()
        return web.json_response(result)

    async def main() -> None:
        app = web.Application(middlewares=[count])
        app.router.add_get("/robots.txt", robots)
        app.router.add_get("/f/{n}", file)
        app.router.add_get("/_stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ports = {}
        for address in addresses:
            site = web.TCPSite(runner, address, 0)
            await site.start()
            ports[address] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        pipe.send(ports)
        await asyncio.Event().wait()

    asyncio.run(main())


async def host_stats(port: int, reset: bool = False) -> dict[str, int]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/_stats", params={"reset": "1"} if reset else {}) as response:
            return await response.json()


async def single_process(targets: list[CrawlTarget], config: CrawlConfig, db: str) -> float:
    with open_store(db) as store:
        lookup = StoreLookup(Matcher.for_store(store, PUBLIC_KEY))
        started = time.perf_counter()
        count = 0
        async with Crawler(lookup, config) as crawler:
            async for _ in crawler.check_many(targets):
                count += 1
        assert count == len(targets)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=50_000)
    parser.add_argument("--hosts", type=int, default=64)
    parser.add_argument("--per-host", type=int, default=2)
    args = parser.parse_args()
    addresses = [f"127.0.0.{i + 1}" for i in range(args.hosts)]
    parent, child = multiprocessing.Pipe()
    host = multiprocessing.Process(target=serve, args=(addresses, child), daemon=True)
    host.start()
    ports = parent.recv()
    urls = [f"http://{addresses[i % args.hosts]}:{ports[addresses[i % args.hosts]]}/f/{i}" for i in range(args.urls)]
    targets = [CrawlTarget(url, {}, i + 1) for i, url in enumerate(urls)]
    config = CrawlConfig(
        addresses=AddressPolicy(allow_loopback=True),
        politeness=PolitenessConfig(per_host_concurrency=args.per_host, global_concurrency=64),
        concurrency=256,
    )
    stats_port = ports["127.0.0.1"]
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder) / "bench.db")
        with open_store(db) as store:
            store.create_list("reports")
        print(f"{args.urls} URLs over {args.hosts} loopback hosts, per-host limit {args.per_host}", flush=True)
        seconds = asyncio.run(single_process(targets, config, db))
        single_highest = max(asyncio.run(host_stats(stats_port, reset=True)).values())
        print(f"single process:      {args.urls / seconds:8.0f} URLs/s ({seconds:.1f} s), highest per-host concurrency {single_highest}", flush=True)
        started = time.perf_counter()
        with dask_client(workers=2) as client:
            startup = time.perf_counter() - started
            (Path(folder) / "urls.txt").write_text("\n".join(urls) + "\n")
            started = time.perf_counter()
            summary = run_partitioned_crawl(
                client, Path(folder) / "urls.txt", targets, Path(folder) / "out", config, store_location=db, partitions=args.hosts * 2
            )
            seconds = time.perf_counter() - started
        assert summary.urls == args.urls
        cluster_highest = max(asyncio.run(host_stats(stats_port)).values())
        print(
            f"Dask --workers 2:    {args.urls / seconds:8.0f} URLs/s ({seconds:.1f} s, cluster start-up {startup:.1f} s apart), "
            f"highest per-host concurrency {cluster_highest}",
            flush=True,
        )
    host.kill()
    within = max(single_highest, cluster_highest) <= args.per_host
    print(f"per-host limit {args.per_host} held in both runs: {within}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
