"""Crawler benchmark, loopback only: URLs/s for header-only checks, bytes read per verdict, and the
share of an SD-1.5-sized checkpoint read for a fuzzy verdict.

    python bench/crawl.py [--urls 5000] [--hosts 500]

1. Header-only checks: a minimal file host (asyncio, keep-alive, honest Range; not a web framework,
   so it costs the shared cores little) in its own process serves, under every URL, a safetensors
   file whose tensors no fingerprint selects (an unknown architecture), so each verdict is one
   Range request for the length prefix and header, validated as strictly as a local file, and a
   digest and URL lookup in a real (empty) store. The URLs spread over `--hosts` host names (a
   stub resolver maps them to 127.0.0.1) with the crawler's default politeness (2 requests per
   host). Reference, same run: a bare aiohttp client making the same Range requests with the
   same concurrency (no SSRF guard, politeness, robots.txt, validation or evidence).
2. SD-1.5-sized checkpoint: the host serves a virtual 1.7 GB fp16 file — a real safetensors
   header with SD-1.5's tensor names and shapes, its data bytes generated per Range request
   (deterministic noise; nothing is written to disk) — and the crawler reaches a fuzzy verdict
   through `fuzzy.select_tensors`. Printed: bytes read / file size, requests, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import re
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from modelsieve.crawler.crawl import CrawlConfig, Crawler
from modelsieve.crawler.lookup import StoreLookup
from modelsieve.crawler.model import CrawlTarget
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.politeness import PolitenessConfig
from modelsieve.fingerprint.synthetic import Architecture
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.sqlite_store import SQLiteStore

BLOCK = 1 << 20


def header_file(specs: list[tuple[str, tuple[int, ...]]]) -> tuple[bytes, int]:
    """The length prefix and header of an fp16 safetensors file with these tensors, and the file size."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in specs:
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    prefix = struct.pack("<Q", len(encoded)) + encoded
    return prefix, len(prefix) + offset


class VirtualFile:
    """A file of `prefix` followed by deterministic fp16 noise, materialised only where asked."""

    def __init__(self, prefix: bytes, size: int) -> None:
        self.prefix, self.size = prefix, size
        self._block = functools.lru_cache(maxsize=256)(self._generate)  # 256 MiB at most

    def _generate(self, index: int) -> bytes:
        rng = np.random.default_rng(index)
        return (rng.standard_normal(BLOCK // 2, dtype=np.float32) * 0.02).astype(np.float16).tobytes()

    def read(self, first: int, last: int) -> bytes:
        parts, position = [], first
        while position <= last:
            if position < len(self.prefix):
                piece = self.prefix[position : last + 1]
            else:
                data_offset = position - len(self.prefix)
                block, within = divmod(data_offset, BLOCK)
                piece = self._block(block)[within : within + last + 1 - position]
            parts.append(piece)
            position += len(piece)
        return b"".join(parts)


_RANGE = re.compile(rb"^range:[ \t]*bytes=(\d+)-(\d*)[ \t\r]*$", re.IGNORECASE | re.MULTILINE)


def ranged(head: bytes, file: VirtualFile) -> bytes:
    """The whole response to a GET with request head `head`: 206 with the asked bytes, or 416."""
    match = _RANGE.search(head)
    first = int(match.group(1)) if match else file.size
    last = min(int(match.group(2)) if match and match.group(2) else file.size - 1, file.size - 1)
    if first > last:
        return response(416, b"", f"Content-Range: bytes */{file.size}\r\n")  # no Range, or none satisfiable
    return response(206, file.read(first, last), f"Content-Range: bytes {first}-{last}/{file.size}\r\nAccept-Ranges: bytes\r\n")


def response(status: int, body: bytes, headers: str = "") -> bytes:
    reason = {206: "Partial Content", 404: "Not Found", 416: "Range Not Satisfiable"}[status]
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


class FileHost(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 file host (GET only, no request bodies), so the benchmark
    measures the crawler rather than a web framework on the shared cores. Honest about Range:
    206 with exactly the asked bytes and their Content-Range, 416 when none can be served."""

    def __init__(self, routes: dict[bytes, VirtualFile]) -> None:
        self.routes = routes
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0]
            file = self.routes.get(path.rpartition(b"/")[0] or path)
            if method != b"GET" or file is None:
                answer = response(404, b"")
            else:
                answer = ranged(head, file)
            assert self.transport is not None
            self.transport.write(answer)


def serve(port_pipe: multiprocessing.connection.Connection) -> None:
    """The benchmark host (run in its own process): small files under /m/, the SD-1.5 file at /sd15.safetensors."""
    small = VirtualFile(*header_file([(f"unknown.layer_{i}.weight", (64, 64)) for i in range(16)]))
    arch = Architecture(scale=1, text_layers=12, vocab=49408)
    sd15 = VirtualFile(*header_file([(spec.ldm, spec.shape) for spec in arch.specs]))
    routes = {b"/m": small, b"/sd15.safetensors": sd15}  # /robots.txt and anything else: 404

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: FileHost(routes), "127.0.0.1", 0, backlog=1024)
        port_pipe.send(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def make_resolver(hosts: int):
    names = {f"h{i}.bench": ["127.0.0.1"] for i in range(hosts)}

    async def resolve(host: str, port: int) -> list[str]:
        return names[host]

    return resolve


async def crawl(lookup: StoreLookup, targets: list[CrawlTarget], config: CrawlConfig, hosts: int) -> tuple[float, list]:
    async with Crawler(lookup, config, resolve=make_resolver(hosts)) as crawler:
        started = time.perf_counter()
        results = [r async for r in crawler.check_many(targets)]
        return time.perf_counter() - started, results


def cpu_seconds(action):  # type: ignore[no-untyped-def]
    """(CPU seconds this process spent, result) of running `action`."""
    before = time.process_time()
    result = action()
    return time.process_time() - before, result


async def bare_aiohttp(urls: list[str], concurrency: int) -> float:
    """The reference: the same Range requests with a bare aiohttp client, same concurrency."""
    queue = iter(urls)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for url in queue:
                async with session.get(url, headers={"Range": "bytes=0-99999"}) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=5000)
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()

    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(send,), daemon=True)
    server.start()
    port = receive.recv()
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = SQLiteStore(Path(folder) / "bench.db")
            store.create_list("bench", publisher="bench")
            lookup = StoreLookup(Matcher(store, refresh_interval=3600))
            config = CrawlConfig(
                addresses=AddressPolicy(allow_loopback=True),
                politeness=PolitenessConfig(per_host_concurrency=2, global_concurrency=args.concurrency),
                concurrency=args.concurrency,
            )
            targets = [CrawlTarget(f"http://h{i % args.hosts}.bench:{port}/m/{i}.safetensors") for i in range(args.urls)]
            asyncio.run(crawl(lookup, targets[:200], config, args.hosts))  # warm-up (imports, first connections)
            load_before = os.getloadavg()[0]
            cpu, (seconds, results) = cpu_seconds(lambda: asyncio.run(crawl(lookup, targets, config, args.hosts)))
            actions = {r.action for r in results}
            assert actions == {"none"}, f"unexpected actions {actions}: {results[0].reason}"
            header_only = all(not r.evidence.file["tensors_read"] for r in results)
            read = sum(r.evidence.bytes_read for r in results)
            requests = sum(len(r.evidence.requests) for r in results)
            bare_urls = [f"http://127.0.0.1:{port}/m/{i}.safetensors" for i in range(args.urls)]
            bare_cpu, bare = cpu_seconds(lambda: asyncio.run(bare_aiohttp(bare_urls, args.concurrency)))
            print(f"machine: {os.cpu_count()} cores, load average {load_before:.1f} before the run (shared with other work)")
            print(f"header-only checks: {args.urls} URLs over {args.hosts} hosts, {args.concurrency} in flight, 2 per host")
            print(f"  crawler:      {args.urls / seconds:8.0f} URLs/s  ({seconds:.2f} s; header-only: {header_only})")
            print(f"  crawler CPU per verdict: {1000 * cpu / args.urls:.2f} ms (client process) = {args.urls / cpu:.0f} URLs/s per free core")
            print(f"  bare aiohttp: {args.urls / bare:8.0f} URLs/s  ({bare:.2f} s; same Range requests, no guard/politeness/evidence)")
            print(f"  bare aiohttp CPU per request: {1000 * bare_cpu / args.urls:.2f} ms")
            print(f"  ratio crawler / bare aiohttp: {bare / seconds:.2f} (wall clock), {bare_cpu / cpu:.2f} (CPU)")
            print(f"  bytes read per verdict: {read / args.urls:,.0f}  (requests per verdict: {requests / args.urls:.2f})")

            sd15_config = CrawlConfig(addresses=AddressPolicy(allow_loopback=True))
            seconds, (result,) = asyncio.run(crawl(lookup, [CrawlTarget(f"http://h0.bench:{port}/sd15.safetensors")], sd15_config, 1))
            file = result.evidence.file
            print(f"SD-1.5-sized checkpoint ({file['size'] / 1e9:.2f} GB, {file['tensors']} tensors, fp16):")
            print(f"  verdict: {result.action} in {seconds:.2f} s, {len(result.evidence.requests)} requests")
            print(f"  bytes read: {result.evidence.bytes_read:,} of {file['size']:,} = {100 * result.evidence.bytes_read / file['size']:.3f} % of the file")
            print(f"  tensors read: {len(file['tensors_read'])} (header {file['header_length']:,} bytes)")
            store.close()
    finally:
        server.terminate()
        server.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
