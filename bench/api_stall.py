"""HTTP API responsiveness while a crawl job fingerprints checkpoints in the same server.

    nice -n 10 .venv/bin/python bench/api_stall.py [--urls 40] [--scale 4]

Writes a synthetic SD-1.5-shaped fine-tune (random weights, `--scale` divides the widths; 1 is
full size) in a temporary folder, serves it under `--urls` names from a loopback file host (Range
requests work, as on real hosts), registers the family's base, and starts `modelsieve serve`
(the `modelsieve` next to this Python: run it with another checkout's interpreter to compare).
Then it times exact lookups, one after another from this process, first with nothing else to do
(baseline), then while a crawl job of all the URLs runs in the server (each URL: header read,
selected tensors read by Range, partial fingerprint as a delta from the base, match). Prints
lookups answered, p50 / p99 / max latency in both phases and the job's wall time. A server that
fingerprints on its event loop shows it as a max latency of the order of one fingerprint.

Only loopback is used; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from modelsieve.api.demo.filehost import serve_folder
from modelsieve.api.http.auth import KeyStore
from modelsieve.fingerprint import synthetic
from modelsieve.fingerprint.fuzzy import PUBLIC_KEY, fingerprint_model
from modelsieve.fingerprint.readers import open_model
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore

MODELSIEVE = str(Path(sys.executable).with_name("modelsieve"))
LISTED = "ab" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(url: str, token: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=60) as response:
        return json.loads(response.read())


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"{len(ordered):5d} lookups  p50 {pick(0.5):7.1f} ms  p99 {pick(0.99):7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=40, help="URLs in the crawl job (default 40)")
    parser.add_argument("--scale", type=int, default=4, help="width divisor of the synthetic checkpoint (default 4)")
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="modelsieve-stall-") as folder_name:
        folder = Path(folder_name)
        family = synthetic.Family(11, synthetic.Architecture(scale=args.scale))
        synthetic.write_safetensors(folder / "base.safetensors", family.checkpoint(family.base))
        tuned = synthetic.apply_delta(family.base, family.delta(1))
        hosted = folder / "hosted"
        hosted.mkdir()
        synthetic.write_safetensors(hosted / "model-0.safetensors", family.checkpoint(tuned))
        for n in range(1, args.urls):
            os.link(hosted / "model-0.safetensors", hosted / f"model-{n}.safetensors")
        db = folder / "store.db"
        with SQLiteStore(db) as store, open_model(folder / "base.safetensors") as base:
            store.create_list("main", publisher="bench")
            store.add_entry("main", NewEntry(category="2c", digests={"sha256": LISTED}))
            store.add_base("sd", fingerprint_model(base, PUBLIC_KEY))
            token, _ = KeyStore(store).create(["admin"], name="bench", rate_per_second=1e6)
        size = (hosted / "model-0.safetensors").stat().st_size
        port = free_port()
        server = subprocess.Popen(
            [MODELSIEVE, "serve", "--port", str(port), "--db", str(db), "--crawl-allow-loopback"],
            stderr=subprocess.DEVNULL,
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(1200):
                try:
                    with urllib.request.urlopen(f"{base_url}/v1/readyz", timeout=5):
                        break
                except OSError:
                    time.sleep(0.1)
            lookup = f"{base_url}/v1/lookup?sha256={LISTED}"

            def timed() -> float:
                start = time.perf_counter()
                assert call(lookup, token)["verdict"] == "exact"
                return time.perf_counter() - start

            baseline: list[float] = []
            end = time.monotonic() + args.baseline_seconds
            while time.monotonic() < end:
                baseline.append(timed())
            with serve_folder(hosted) as files:
                urls = [f"{files}model-{n}.safetensors" for n in range(args.urls)]
                started = time.perf_counter()
                job = call(f"{base_url}/v1/crawl", token, {"urls": urls})["id"]
                during: list[float] = []
                status: dict = {}
                for _ in range(1_000_000):
                    during.append(timed())
                    if len(during) % 20 == 0:
                        status = call(f"{base_url}/v1/crawl/{job}?limit=1", token)
                        if status["status"] in ("done", "failed"):
                            break
                took = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(30)
    print(f"server: {MODELSIEVE}; load average {os.getloadavg()[0]:.2f}; checkpoint {size / 2**20:.0f} MiB × {args.urls} URLs")
    print(f"  idle server        {percentiles(baseline)}")
    print(f"  during crawl job   {percentiles(during)}   (job {status.get('status')}, {status.get('done')} URLs in {took:.1f} s)")


if __name__ == "__main__":
    main()
