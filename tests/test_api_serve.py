"""`modelsieve serve` and `modelsieve keys api` as real subprocesses on loopback."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelsieve.api.cli import main
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore

from tests.api_support import bearer

LISTED = "ab" * 32
READY_SECONDS = 120  # two spawned workers import everything; generous for a machine under load
MODELSIEVE = [sys.executable, "-c", "import sys; from modelsieve.api.cli import main; sys.exit(main(sys.argv[1:]))"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODELSIEVE, *args], capture_output=True, text=True, timeout=60)


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=bearer(token) if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_ready(base: str, server: subprocess.Popen[str], stderr: Path, workers: int) -> None:
    """Until every worker has said it runs and the port answers readiness."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert server.poll() is None, stderr.read_text()
        if stderr.read_text().count("Running on") == workers:
            try:
                if get(f"{base}/v1/readyz")[0] == 200:
                    return
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"server did not become ready in {READY_SECONDS} s: {stderr.read_text()}")


@contextlib.contextmanager
def serving(tmp_path: Path, *args: str, workers: int) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """`modelsieve serve ARGS` on a free port until ready: its base URL, process and stderr file;
    killed on exit unless the test stopped it."""
    port = free_port()
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as stderr_file:
        server = subprocess.Popen([*MODELSIEVE, "serve", "--port", str(port), *args], stdout=subprocess.DEVNULL, stderr=stderr_file, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base, server, stderr, workers=workers)
        yield base, server, stderr
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[str], Path]]:
    db = tmp_path / "store.db"
    with SQLiteStore(db) as store:
        store.create_list("main", publisher="platform-a")
        store.add_entry("main", NewEntry(category="2c", digests={"sha256": LISTED}, note="a title naming someone"))
    admin = cli("keys", "api", "create", "--scope", "admin", "--name", "ops", "--db", str(db))
    assert admin.returncode == 0, admin.stderr
    audit = ("--audit-log", str(tmp_path / "audit.log"))
    with serving(tmp_path, "--workers", "2", "--db", str(db), *audit, workers=2) as (base, server, stderr):
        yield base, admin.stdout.strip(), server, stderr


def test_keys_cli_prints_a_key_once_lists_without_secrets_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "store.db")
    assert main(["keys", "api", "create", "--scope", "lookup", "--scope", "crawl", "--name", "hub", "--db", db]) == 0
    created = capsys.readouterr()
    token = created.out.strip()
    assert token.startswith("msk_") and "shown only now" in created.err
    key_id = token.split("_")[1]
    assert main(["keys", "api", "list", "--json", "--db", db]) == 0
    listed = capsys.readouterr().out
    record = json.loads(listed)
    assert record["key_id"] == key_id and record["scopes"] == ["lookup", "crawl"] and record["revoked_at"] is None
    assert token.split("_", 2)[2] not in listed
    assert main(["keys", "api", "revoke", key_id, "--db", db]) == 0
    assert main(["keys", "api", "revoke", key_id, "--db", db]) == 2
    assert capsys.readouterr().err.startswith("modelsieve: error: no live API key")
    with pytest.raises(SystemExit):
        main(["keys", "api", "create", "--scope", "root", "--db", db])
    assert "invalid choice" in capsys.readouterr().err


def test_two_workers_share_the_port_sum_metrics_and_stop_cleanly_on_sigterm(
    served: tuple[str, str, subprocess.Popen[str], Path],
) -> None:
    base, admin, server, stderr_path = served
    for _ in range(20):  # new connections: the kernel spreads them over both workers
        assert get(f"{base}/v1/healthz")[0] == 200
    status, body = get(f"{base}/metrics", admin)
    assert status == 200
    assert 'modelsieve_http_requests_total{method="GET",route="/v1/healthz",status="200"} 20.0' in body.decode()
    assert get(f"{base}/metrics")[0] == 401
    status, body = get(f"{base}/v1/lookup?sha256={LISTED}", admin)
    [match] = json.loads(body)["matches"]
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    stderr = stderr_path.read_text()
    assert stderr.count("Running on http://127.0.0.1") == 2
    assert "Traceback" not in stderr
    [audited] = [json.loads(line) for line in (stderr_path.parent / "audit.log").read_text().splitlines()]
    assert audited["event"] == "match" and audited["matches"][0]["entry_id"] == match["entry_id"]
    assert "title" not in json.dumps(audited)


def test_serve_refuses_port_zero_with_several_workers() -> None:
    refused = cli("serve", "--workers", "2", "--port", "0")
    assert refused.returncode == 2 and "--port 0" in refused.stderr


def test_serve_keeps_crawl_jobs_in_the_folder_crawl_jobs_dir_names(tmp_path: Path) -> None:
    assert "--crawl-jobs-dir DIR" in cli("serve", "--help").stdout
    db, jobs = tmp_path / "store.db", tmp_path / "shared" / "jobs"
    crawl = cli("keys", "api", "create", "--scope", "crawl", "--db", str(db))
    assert crawl.returncode == 0, crawl.stderr
    jobs_dir = ("--crawl-jobs-dir", str(jobs), "--crawl-jobs", "0")
    with serving(tmp_path, "--db", str(db), *jobs_dir, workers=1) as (base, server, _):
        body = json.dumps({"urls": ["https://models.example/a.safetensors"]}).encode()
        headers = {**bearer(crawl.stdout.strip()), "Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(f"{base}/v1/crawl", body, headers), timeout=10) as response:
            job = json.loads(response.read())["id"]
        assert json.loads((jobs / job / "input.jsonl").read_text())["url"] == "https://models.example/a.safetensors"
        assert not Path(f"{db}.crawl-jobs").exists()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
