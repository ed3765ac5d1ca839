"""Fake hosts for the crawler tests, all on loopback: a file host (well-behaved and misbehaving)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web

from modelsieve.crawler.fetch import parse_content_range


@dataclass
class HostLog:
    """What a fake host saw: requests per path, concurrency per Host header, request start times."""

    hits: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    starts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    user_agents: set[str] = field(default_factory=set)
    ranges: list[str | None] = field(default_factory=list)
    total_in_flight: int = 0
    max_total_in_flight: int = 0


LOG = web.AppKey("log", HostLog)
FILES = web.AppKey("files", dict)
ROBOTS = web.AppKey("robots", list)  # [status, text]
DELAY = web.AppKey("delay", list)  # [seconds] every request sleeps while counted in flight


def request_host(request: web.Request) -> str:
    return (request.headers.get("Host") or "").rsplit(":", 1)[0]


@web.middleware
async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    log = request.app[LOG]
    host = request_host(request)
    log.hits[request.path] += 1
    log.starts[host].append(time.monotonic())
    log.user_agents.add(request.headers.get("User-Agent", ""))
    if request.path != "/robots.txt":
        log.ranges.append(request.headers.get("Range"))
    log.in_flight[host] += 1
    log.total_in_flight += 1
    log.max_in_flight[host] = max(log.max_in_flight[host], log.in_flight[host])
    log.max_total_in_flight = max(log.max_total_in_flight, log.total_in_flight)
    try:
        if request.app[DELAY][0]:
            await asyncio.sleep(request.app[DELAY][0])
        return await handler(request)
    finally:
        log.in_flight[host] -= 1
        log.total_in_flight -= 1


def serve_range(request: web.Request, data: bytes) -> web.Response:
    """A correct 200/206 answer for `data`, honouring a single-range Range header."""
    value = request.headers.get("Range")
    if not value or not value.startswith("bytes="):
        return web.Response(body=data, headers={"Accept-Ranges": "bytes"})
    first_text, _, last_text = value[6:].partition("-")
    if not first_text:  # suffix range
        first = max(0, len(data) - int(last_text))
        last = len(data) - 1
    else:
        first = int(first_text)
        last = min(int(last_text), len(data) - 1) if last_text else len(data) - 1
    if first >= len(data):
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    parse_content_range(f"bytes {first}-{last}/{len(data)}")  # the fake must itself be consistent
    return web.Response(
        status=206,
        body=data[first : last + 1],
        headers={"Content-Range": f"bytes {first}-{last}/{len(data)}", "Accept-Ranges": "bytes"},
    )


async def file_handler(request: web.Request) -> web.StreamResponse:
    data = request.app[FILES].get(request.match_info["name"])
    if data is None:
        raise web.HTTPNotFound()
    return serve_range(request, data)


async def no_range_handler(request: web.Request) -> web.StreamResponse:
    data = request.app[FILES].get(request.match_info["name"])
    if data is None:
        raise web.HTTPNotFound()
    return web.Response(body=data)


async def lying_length_handler(request: web.Request) -> web.StreamResponse:
    """Declares more bytes than it sends, then closes the connection."""
    data = request.app[FILES][request.match_info["name"]]
    response = web.StreamResponse(headers={"Content-Length": str(len(data) + 1000)})
    await response.prepare(request)
    await response.write(data)
    request.transport.close()  # type: ignore[union-attr]
    return response


async def slow_handler(request: web.Request) -> web.StreamResponse:
    """Sends headers, then trickles nothing for `seconds` before the body."""
    response = web.StreamResponse(headers={"Content-Length": "4"})
    await response.prepare(request)
    await asyncio.sleep(float(request.query.get("seconds", "5")))
    await response.write(b"late")
    return response


async def big_handler(request: web.Request) -> web.StreamResponse:
    """A chunked body of `size` bytes with no Content-Length."""
    size = int(request.query["size"])
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    sent = 0
    while sent < size:
        piece = min(65536, size - sent)
        await response.write(b"\0" * piece)
        sent += piece
    return response


async def to_handler(request: web.Request) -> web.StreamResponse:
    """Redirect to ?target= with ?status= (default 302)."""
    return web.Response(status=int(request.query.get("status", "302")), headers={"Location": request.query["target"]})


async def loop_handler(request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "/loop"})


async def flaky_handler(request: web.Request) -> web.StreamResponse:
    """Answers `status` (default 503) with an optional Retry-After `fails` times, then 200 'ok'."""
    log = request.app[LOG]
    if log.hits[request.path] <= int(request.query.get("fails", "1000000")):
        headers = {"Retry-After": request.query["retry_after"]} if "retry_after" in request.query else {}
        return web.Response(status=int(request.query.get("status", "503")), headers=headers, text="busy")
    return web.Response(text="ok")


LIES = web.AppKey("lies", list)  # one lie (or None) per request to /liar/, consumed in order
LIE_KINDS = ("ignore_range", "shift", "wrong_total", "short_body", "close_early", "status_503")


async def liar_handler(request: web.Request) -> web.StreamResponse:
    """Serves `files` with Range, but tells the next queued lie about it."""
    data = request.app[FILES][request.match_info["name"]]
    lies = request.app[LIES]
    lie = lies.pop(0) if lies else None
    honest = serve_range(request, data)
    if lie is None:
        return honest
    if lie == "ignore_range":
        return web.Response(body=data)
    if lie == "status_503":
        return web.Response(status=503)
    body = bytes(honest.body)  # type: ignore[arg-type]
    headers = dict(honest.headers)
    if honest.status == 206:
        first, last, total = parse_content_range(headers["Content-Range"])
        if lie == "shift":
            headers["Content-Range"] = f"bytes {first + 1}-{last + 1}/{total}"
        elif lie == "wrong_total":
            headers["Content-Range"] = f"bytes {first}-{last}/{(total or 0) + 7}"
        elif lie == "short_body":
            body = body[:-1]
    if lie == "close_early":
        response = web.StreamResponse(status=honest.status, headers={**headers, "Content-Length": str(len(body))})
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        request.transport.close()  # type: ignore[union-attr]
        return response
    headers.pop("Content-Length", None)
    return web.Response(status=honest.status, body=body, headers=headers)


async def echo_handler(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.method)


async def robots_handler(request: web.Request) -> web.StreamResponse:
    status, text = request.app[ROBOTS]
    return web.Response(status=status, text=text)


def file_host(files: dict[str, bytes] | None = None, *, robots: tuple[int, str] = (404, ""), delay: float = 0.0) -> web.Application:
    """The fake file host: correct and misbehaving routes over the same `files`."""
    app = web.Application(middlewares=[record])
    app[LOG] = HostLog()
    app[FILES] = dict(files or {})
    app[ROBOTS] = list(robots)
    app[DELAY] = [delay]
    app[LIES] = []
    app.router.add_get("/files/{name}", file_handler)
    app.router.add_get("/liar/{name}", liar_handler)
    app.router.add_get("/norange/{name}", no_range_handler)
    app.router.add_get("/lying/{name}", lying_length_handler)
    app.router.add_get("/slow", slow_handler)
    app.router.add_get("/big", big_handler)
    app.router.add_route("*", "/to", to_handler)
    app.router.add_get("/loop", loop_handler)
    app.router.add_get("/flaky/{key}", flaky_handler)
    app.router.add_route("*", "/echo", echo_handler)
    app.router.add_get("/robots.txt", robots_handler)
    return app


def synthetic_safetensors(seed: int = 0, tensors: int = 12, width: int = 64, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file of random float16/float32 weights (nothing but noise), as bytes."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    arrays = {
        f"model.diffusion_model.block_{i:02d}.weight": rng.standard_normal((width, width // 2 + i)).astype(
            np.float16 if i % 2 else np.float32
        )
        for i in range(tensors)
    }
    return save(arrays, metadata=metadata)


def published_hashes(data: bytes) -> dict[str, str]:
    """What a Civitai-style API publishes for a file, computed independently of modelsieve."""
    import hashlib
    import zlib

    sha256 = hashlib.sha256(data).hexdigest()
    return {"SHA256": sha256.upper(), "AutoV2": sha256[:10].upper(), "CRC32": zlib.crc32(data).to_bytes(4, "little").hex().upper()}


HUB_FILES = web.AppKey("hub_files", dict)  # "owner/repo/path" → bytes


async def hub_resolve(request: web.Request) -> web.StreamResponse:
    """A Hugging-Face-style `/resolve/`: LFS files redirect to the CDN with X-Linked-Etag/-Size."""
    import hashlib

    key = f"{request.match_info['repo']}/{request.match_info['path']}"
    data = request.app[HUB_FILES].get(key)
    if data is None:
        raise web.HTTPNotFound()
    if key.endswith(".safetensors"):
        sha256 = hashlib.sha256(data).hexdigest()
        return web.Response(
            status=302,
            headers={
                "Location": f"/cdn/{key}",
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(data)),
                "ETag": '"0123abcd"',
            },
        )
    return web.Response(body=data, headers={"ETag": '"0123abcd"'})


async def hub_cdn(request: web.Request) -> web.StreamResponse:
    return serve_range(request, request.app[HUB_FILES][request.match_info["key"]])


def fake_hub(files: dict[str, bytes]) -> web.Application:
    """A Hugging-Face-style hub: `/{owner}/{repo}/resolve/{rev}/{path}` and a ranged CDN."""
    app = web.Application(middlewares=[record])
    app[LOG] = HostLog()
    app[DELAY] = [0.0]
    app[HUB_FILES] = dict(files)
    app[ROBOTS] = [404, ""]
    app.router.add_route("*", r"/{repo:[^/]+/[^/]+}/resolve/{rev}/{path:.+}", hub_resolve)
    app.router.add_get(r"/cdn/{key:.+}", hub_cdn)
    app.router.add_get("/robots.txt", robots_handler)
    return app


VERSIONS = web.AppKey("versions", dict)  # version id → (file name, bytes)


async def civitai_version(request: web.Request) -> web.StreamResponse:
    entry = request.app[VERSIONS].get(request.match_info["id"])
    if entry is None:
        raise web.HTTPNotFound()
    name, data = entry
    files = [
        {
            "name": name.replace(".safetensors", ".yaml"),
            "sizeKB": 1.0,
            "type": "Config",
            "metadata": {"format": "Other"},
            "hashes": {},
            "downloadUrl": "/nowhere",
        },
        {
            "name": name,
            "sizeKB": len(data) / 1024,
            "type": "Model",
            "primary": True,
            "metadata": {"format": "SafeTensor", "fp": "fp16"},
            "hashes": published_hashes(data),
            "downloadUrl": f"/api/download/models/{request.match_info['id']}?type=Model&format=SafeTensor",
        },
    ]
    return web.json_response({"id": int(request.match_info["id"]), "files": files})


async def civitai_download(request: web.Request) -> web.StreamResponse:
    if request.match_info["id"] not in request.app[VERSIONS]:
        raise web.HTTPNotFound()
    return web.Response(status=307, headers={"Location": f"/files/{request.match_info['id']}"})


async def civitai_file(request: web.Request) -> web.StreamResponse:
    return serve_range(request, request.app[VERSIONS][request.match_info["id"]][1])


def fake_civitai(versions: dict[str, tuple[str, bytes]]) -> web.Application:
    """A Civitai-style API: model-version answers with file hashes, downloads redirecting to files."""
    app = web.Application(middlewares=[record])
    app[LOG] = HostLog()
    app[DELAY] = [0.0]
    app[VERSIONS] = dict(versions)
    app[ROBOTS] = [404, ""]
    app.router.add_get("/api/v1/model-versions/{id}", civitai_version)
    app.router.add_get("/api/download/models/{id}", civitai_download)
    app.router.add_get("/files/{id}", civitai_file)
    app.router.add_get("/robots.txt", robots_handler)
    return app


@contextlib.contextmanager
def serve_in_thread(app: web.Application) -> Iterator[tuple[int, asyncio.AbstractEventLoop]]:
    """Run `app` on 127.0.0.1 in a thread with its own loop (for synchronous tests and subprocesses)."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port, loop
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
