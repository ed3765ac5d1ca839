"""A client that goes away mid-request (an upload cut off, a body never finished) on the server as
`modelsieve serve` runs it (aiohttp's default: handlers are not cancelled when the peer leaves)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelsieve.api.http import ApiConfig
from tests.api_server_thread import serving
from tests.api_support import bearer, make_keys, ready, start_api


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    db_path = tmp_path / "store.db"
    keys = make_keys(db_path)
    with serving(ApiConfig(db_path=db_path, audit_log=tmp_path / "audit.jsonl", crawl_jobs_per_process=0)) as base:
        yield base, keys


def send_part_and_leave(base: str, path: str, token: str, declared: int, sent: int) -> None:
    """POST `path` declaring `declared` body bytes, send `sent` of them, then close the connection."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: {declared}\r\n\r\n"
        sock.sendall(head.encode() + b"x" * sent)
        time.sleep(0.3)  # the server is reading the body when the client leaves


def metrics(base: str, token: str) -> str:
    request = urllib.request.Request(f"{base}/metrics", headers=bearer(token))
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


@pytest.mark.parametrize(("path", "scope", "declared"), [("/v1/match/file", "lookup", 4_000_000), ("/v1/crawl", "crawl", 900_000)])
def test_a_client_leaving_mid_body_is_no_server_error(
    served: tuple[str, dict[str, str]], caplog: pytest.LogCaptureFixture, path: str, scope: str, declared: int
) -> None:
    base, keys = served
    caplog.set_level(logging.WARNING, logger="modelsieve")
    send_part_and_leave(base, path, keys[scope], declared=declared, sent=200_000)
    counted = ""
    for _ in range(100):  # the server notices the closed connection on its own loop: bounded wait
        counted = "\n".join(line for line in metrics(base, keys["admin"]).splitlines() if f'route="{path}"' in line and "requests_total" in line)
        if counted:
            break
        time.sleep(0.05)
    assert 'status="499"' in counted and 'status="500"' not in counted, counted
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    # the upload's slot was given back: uploads are still accepted
    request = urllib.request.Request(f"{base}/v1/match/file", data=b"abc", headers=bearer(keys["lookup"]), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


async def test_on_a_server_that_cancels_handlers_a_client_leaving_is_counted_as_499(aiohttp_client: Any, tmp_path: Path) -> None:
    api = await ready(await start_api(aiohttp_client, tmp_path / "store.db"))  # aiohttp's test server cancels handlers
    port = api.client.server.port
    assert port is not None
    await asyncio.to_thread(send_part_and_leave, f"http://127.0.0.1:{port}", "/v1/match/file", api.keys["lookup"], 4_000_000, 200_000)
    counted = ""
    for _ in range(100):
        text = await (await api.client.get("/metrics", headers=api.as_("admin"))).text()
        counted = "\n".join(line for line in text.splitlines() if 'route="/v1/match/file"' in line and "requests_total" in line)
        if counted:
            break
        await asyncio.sleep(0.05)
    assert 'status="499"' in counted and 'status="500"' not in counted, counted


def drip(base: str, path: str, token: str, seconds: float) -> tuple[str, float]:
    """POST `path` declaring a 1 MB body and send it a byte every 50 ms; the server's status line
    and how long it took to answer (or "" when it did not within `seconds`)."""
    host, port = base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000000\r\n\r\n".encode())
        sock.settimeout(0.05)
        while time.monotonic() - started < seconds:
            try:
                answer = sock.recv(200)
            except TimeoutError:
                sock.sendall(b"x")
                continue
            return answer.decode(errors="replace").split("\r\n")[0], time.monotonic() - started
    return "", time.monotonic() - started


def test_an_upload_dripping_bytes_is_cut_off_and_frees_its_slot(tmp_path: Path) -> None:
    """With one upload slot, a client sending a byte every 50 ms held it (and refused every other
    upload with 503) until the 600 s upload timeout."""
    db_path = tmp_path / "store.db"
    keys = make_keys(db_path)
    config = ApiConfig(db_path=db_path, audit_log=tmp_path / "audit.jsonl", crawl_jobs_per_process=0,
                       concurrent_uploads=1, upload_min_rate=1000, upload_grace_seconds=0.5)
    with serving(config) as base:
        status, took = drip(base, "/v1/match/file", keys["lookup"], seconds=20)
        assert status == "HTTP/1.1 408 Request Timeout" and took < 10, (status, took)
        request = urllib.request.Request(f"{base}/v1/match/file", data=b"abc" * 1000, headers=bearer(keys["lookup"]), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
