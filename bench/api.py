"""HTTP API throughput: exact lookups per second on loopback, against a bare aiohttp server.

    nice -n 19 .venv/bin/python bench/api.py [--entries 10000] [--seconds 10] [--connections 64]

Makes a temporary store with `--entries` hash-only entries and an API key, starts
`modelsieve serve` (1 and 2 worker processes sharing the port), and drives
`GET /v1/lookup?sha256=...` with Debian's `wrk` (installed with apt-get when missing) from
another process: half the requests name listed digests (a match, with its audit line), half
unlisted ones. As the public yardstick it runs, in the same way and the same run, a bare aiohttp
application answering a constant JSON object from the same number of processes: the ceiling of
the framework on this machine. Prints requests/s, latency percentiles, non-200 answers, the
servers' CPU time per request (on a loaded machine wall-clock rates say more about the other load
than about the server; CPU per request does not) and the ratio to the bare server.

Only loopback is used; every run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MODELSIEVE = str(Path(sys.executable).with_name("modelsieve"))
TARGET = 2000  # lookups/s with two worker processes (issue 6)
PATHS_IN_SCRIPT = 1000

BARE_SERVER = """
import sys
from aiohttp import web
from multiprocessing import get_context

async def lookup(request):
    return web.json_response({"digests": dict(request.query), "verdict": "none", "matches": []})

def serve(port):
    app = web.Application()
    app.router.add_get("/v1/lookup", lookup)
    app.router.add_get("/v1/readyz", lambda request: web.json_response({"status": "ready"}))
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)

if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    processes = [get_context("spawn").Process(target=serve, args=(port,)) for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
"""


@dataclass(frozen=True)
class Run:
    name: str
    workers: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_200: int
    requests: int
    cpu_seconds: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1e6


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing Debian's wrk (apt-get) ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or sys.exit("bench/api.py: cannot install wrk")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest(i: int) -> str:
    return hashlib.sha256(f"bench entry {i}".encode()).hexdigest()


def make_store(location: str, entries: int) -> str:
    """A store (a SQLite path or a PostgreSQL DSN) with `entries` hash-only entries; returns an API key
    whose rate limit never bites."""
    from modelsieve.api.http.auth import KeyStore
    from modelsieve.hashlists.model import NewEntry
    from modelsieve.hashlists.store import open_store

    with open_store(location, upgrade=True) as store:
        store.create_list("bench", publisher="bench")
        store.add_entries("bench", (NewEntry(category="2c", digests={"sha256": digest(i)}) for i in range(entries)))
        token, _ = KeyStore(store).create(["lookup"], name="bench", rate_per_second=1e9)
    return token


def wrk_script(folder: Path, entries: int) -> Path:
    """A wrk Lua script cycling through lookup paths: listed and unlisted digests alternating."""
    paths = [f"/v1/lookup?sha256={digest(i % entries) if i % 2 == 0 else digest(entries + i)}" for i in range(PATHS_IN_SCRIPT)]
    script = folder / "lookups.lua"
    script.write_text(
        "local paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
        "local i = 0\n"
        "request = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n"
    )
    return script


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Until 20 fresh connections in a row (spread over every worker by the kernel) find it ready."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 20:
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bench/api.py: the server at {base} did not become ready")
        try:
            with urllib.request.urlopen(f"{base}/v1/readyz", timeout=5) as response:
                streak = streak + 1 if response.status == 200 else 0
        except (OSError, urllib.error.HTTPError):
            streak = 0
            time.sleep(0.2)


def process_tree_cpu(root: int) -> float:
    """User + system CPU seconds of a process and its children (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(times.get(pid, 0.0) for pid in tree)


def drive(wrk: str, base: str, script: Path, seconds: int, connections: int, token: str | None, server: int) -> tuple[float, float, float, int, int, float]:
    headers = ["-H", f"Authorization: Bearer {token}"] if token else []
    cpu_before = process_tree_cpu(server)
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), *headers, f"{base}/v1/lookup"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    cpu = process_tree_cpu(server) - cpu_before
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_200 = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return rate, _percentile(out, "50%"), _percentile(out, "99%"), non_200, requests, cpu


def _percentile(out: str, label: str) -> float:
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(name: str, command: list[str], workers: int, wrk: str, script: Path, args: argparse.Namespace, token: str | None) -> Run:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*command, str(port), str(workers)] if token is None else [*command, "--port", str(port), "--workers", str(workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(base, server)
        drive(wrk, base, script, 2, args.connections, token, server.pid)  # warm-up
        rate, p50, p99, non_200, requests, cpu = drive(wrk, base, script, args.seconds, args.connections, token, server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return Run(name, workers, rate, p50, p99, non_200, requests, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000, help="hash-only entries in the store (default 10000)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections of the load generator (default 64)")
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        help="also measure two API replicas (processes sharing the port, as behind a load balancer) on this "
        "PostgreSQL store: an empty database or schema the bench may fill (issue 9)",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="modelsieve-bench-api-") as tmp:
        folder = Path(tmp)
        db = str(folder / "bench.db")
        token = make_store(db, args.entries)
        script = wrk_script(folder, args.entries)
        bare = folder / "bare_server.py"
        bare.write_text(BARE_SERVER)
        serve = [MODELSIEVE, "serve", "--db", db, "--audit-log", str(folder / "audit.log")]
        runs = [
            measure("modelsieve serve", serve, 1, wrk, script, args, token),
            measure("modelsieve serve", serve, 2, wrk, script, args, token),
        ]
        if args.postgres:
            pg_token = make_store(args.postgres, args.entries)
            pg_serve = [MODELSIEVE, "serve", "--db", args.postgres, "--audit-log", str(folder / "audit.log")]
            runs.append(measure("modelsieve serve, PostgreSQL", pg_serve, 2, wrk, script, args, pg_token))
        runs.append(measure("bare aiohttp (constant JSON)", [sys.executable, str(bare)], 2, wrk, script, args, None))
        audited = sum(1 for _ in open(folder / "audit.log", encoding="utf-8"))
    bare_rate = runs[-1].requests_per_second
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (after the runs)")
    print(f"store: {args.entries} hash-only entries; wrk: {args.connections} connections, {args.seconds} s a run; "
          "half the lookups match (and are audited)")
    print(f"{'server':<30} {'workers':>7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-200':>7} {'CPU µs/req':>10} {'vs bare':>7}")
    for run in runs:
        print(f"{run.name:<30} {run.workers:>7} {run.requests_per_second:>8.0f} {run.p50_ms:>7.2f} {run.p99_ms:>7.2f} "
              f"{run.non_200:>7} {run.cpu_us_per_request:>10.0f} {run.requests_per_second / bare_rate:>7.2f}")
    two = runs[1]
    print(f"audit lines written: {audited}")
    print(f"target ≥ {TARGET} lookups/s with 2 workers: {'met' if two.requests_per_second >= TARGET else 'NOT met'} "
          f"({two.requests_per_second:.0f}/s; CPU-bound capacity {2e6 / two.cpu_us_per_request:.0f}/s on 2 cores)")


if __name__ == "__main__":
    main()
