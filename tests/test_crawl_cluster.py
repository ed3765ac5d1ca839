"""The crawl on a real Dask LocalCluster (2 worker processes): partitions by domain, atomic parts,
a SIGKILLed worker costing a retry and never a lost or doubled URL, --resume, clear errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from modelsieve.api.cli import main
from modelsieve.crawler.cluster import dask_client
from modelsieve.crawler.crawl import CrawlConfig
from modelsieve.crawler.inputs import read_targets
from modelsieve.crawler.job import JobError, file_sha256, lock_output
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.partitioned import MANIFEST, JobManifest, MERGED, part_path, partition_of, read_partition_input, run_partitioned_crawl, spill
from modelsieve.crawler.politeness import PolitenessConfig
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.store import open_store
from tests.crawler_fakes import LOG, file_host, synthetic_safetensors

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")  # loopback addresses: one registrable "domain" each
FILES = {f"m{i}.safetensors": synthetic_safetensors(seed=i, tensors=4, width=16) for i in range(10)}
PER_HOST = 2


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[dict[str, int], web.Application]]:
    """One slow-ish file host listening on four loopback addresses; yields {address: port} and the app."""
    app = file_host(FILES, delay=0.05)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    ports = {}
    for address in HOSTS:
        site = web.TCPSite(runner, address, 0)
        loop.run_until_complete(site.start())
        ports[address] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield ports, app
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with dask_client(workers=2) as connected:
        yield connected


@pytest.fixture
def job(tmp_path: Path, hosts: tuple[dict[str, int], web.Application]) -> tuple[Path, str, list[str]]:
    """A URL file over every host and file, and a store listing one of the files."""
    ports, _ = hosts
    urls = [f"http://{address}:{port}/files/{name}" for address, port in ports.items() for name in FILES]
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    db = str(tmp_path / "lists.db")
    with open_store(db) as store:
        store.create_list("reports")
        store.add_entries("reports", [NewEntry(category="2c", digests={"sha256": hashlib.sha256(FILES["m3.safetensors"]).hexdigest()})])
    return tmp_path / "urls.txt", db, urls


CONFIG = CrawlConfig(addresses=AddressPolicy(allow_loopback=True), politeness=PolitenessConfig(per_host_concurrency=PER_HOST), concurrency=16)


def merged_urls(out: Path) -> list[str]:
    return [json.loads(line)["url"] for line in (out / MERGED).read_text().splitlines()]


def test_partitions_follow_registrable_domains() -> None:
    assert partition_of("https://a.example.com/x", 64) == partition_of("http://b.example.com/y", 64)
    assert len({partition_of(f"http://{address}/", 1000) for address in HOSTS}) == len(HOSTS)


def test_the_client_spills_partitions_to_disk_in_bounded_memory(tmp_path: Path) -> None:
    """The client held every target (≈ 350 bytes a URL) and shipped whole partitions through the
    scheduler: tens of GB for the 10⁸-URL jobs this path is for. Now it holds a small buffer."""
    count = 16_000
    unique = [f"https://host{j % 40}.example{j % 7}.com/m/{j}.safetensors\n" for j in range(count // 2)]
    lines = (unique[i % len(unique)] for i in range(count))  # every URL twice
    partition_of("https://warm.example.com/", 16)  # the host caches (bounded, per host name) are not what this measures
    tracemalloc.start()
    try:
        used = spill(read_targets(lines), 16, tmp_path, lambda bad: None, buffer_bytes=256 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes for {count} URLs"  # the old split: ≈ 5.5 MB here
    urls: list[str] = []
    for partition in sorted(used):
        targets = read_partition_input(tmp_path, partition)
        assert [t.line for t in targets] == sorted(t.line for t in targets)  # input order, first line of each URL
        assert all(partition_of(t.url, 16) == partition for t in targets)
        urls += [t.url for t in targets]
    assert len(urls) == len(set(urls)) == count // 2


def test_a_second_client_on_the_same_output_folder_is_refused(tmp_path: Path) -> None:
    """It would rewrite the spilled inputs under the first client's running tasks."""
    (tmp_path / "urls.txt").write_text("https://a.example/m.safetensors\n")
    out = tmp_path / "out"
    out.mkdir()
    with lock_output(out / ".lock", create=True, output=out), pytest.raises(JobError, match="another crawl is writing"):
        run_partitioned_crawl(None, tmp_path / "urls.txt", [], out, CONFIG, store_location=str(tmp_path / "db"))


def test_a_partitioned_crawl_resumes_only_in_the_mode_it_started_with(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("https://a.example/m.safetensors\n")
    out = tmp_path / "out"
    out.mkdir()
    JobManifest(file_sha256(tmp_path / "urls.txt"), 4, "host").save(out)
    assert JobManifest.load(out) == JobManifest(file_sha256(tmp_path / "urls.txt"), 4, "host")
    with pytest.raises(JobError, match="started with --mode host: resume it with --mode host"):
        run_partitioned_crawl(None, tmp_path / "urls.txt", [], out, CONFIG, store_location=str(tmp_path / "db"), partitions=4, resume=True)
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["mode"]  # written before the mode was recorded: any mode may resume it
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert JobManifest.load(out) == JobManifest(file_sha256(tmp_path / "urls.txt"), 4, None)


def test_a_worker_killed_mid_job_costs_a_retry_never_a_url(client: object, job: tuple[Path, str, list[str]], tmp_path: Path, hosts: tuple[dict[str, int], web.Application]) -> None:
    urls_file, db, urls = job
    out = tmp_path / "out"
    outcome: dict[str, object] = {}

    def crawl() -> None:
        try:
            lines = urls_file.read_text().splitlines()
            outcome["summary"] = run_partitioned_crawl(
                client, urls_file, read_targets(lines), out, CONFIG, store_location=db, partitions=len(HOSTS) * 2
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    runner = threading.Thread(target=crawl)
    runner.start()
    pids = client.run(os.getpid)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    busy: list[str] = []
    while not busy:
        assert time.monotonic() < deadline and runner.is_alive(), f"no task ever ran: {outcome}"
        busy = [worker for worker, tasks in client.processing().items() if tasks]  # type: ignore[attr-defined]
        time.sleep(0.01)
    os.kill(pids[busy[0]], signal.SIGKILL)
    runner.join(120)
    assert "error" not in outcome, outcome
    got = merged_urls(out)
    assert sorted(got) == sorted(urls) and len(got) == len(set(got)), "every URL exactly once"
    manifest = json.loads((out / MANIFEST).read_text())
    assert sum(p["urls"] for p in manifest["completed"].values()) == len(urls)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "no temp files left behind"
    delisted = [json.loads(line) for line in (out / MERGED).read_text().splitlines() if '"delist"' in line]
    assert [r["url"].rsplit("/", 1)[1] for r in delisted] == ["m3.safetensors"] * len(HOSTS)
    assert max(hosts[1][LOG].max_in_flight.values()) <= PER_HOST, "per-host limits hold across the cluster"
    loads = client.run(lambda dask_worker: [p.loads for n, p in dask_worker.plugins.items() if n.startswith("modelsieve-lists")])  # type: ignore[attr-defined]
    assert all(counts and all(c == 1 for c in counts) for counts in loads.values()), loads


def test_the_command_reports_junk_lines_and_resumes(client: object, job: tuple[Path, str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls_file, db, urls = job
    urls_file.write_text("\n".join([urls[0], "not a url", urls[1], "ftp://x.example/y", *urls[2:]]) + "\n")
    scheduler = client.scheduler.address  # type: ignore[attr-defined]
    out = tmp_path / "cli-out"
    argv = ["crawl", str(urls_file), "--out", str(out), "--scheduler", scheduler, "--db", db, "--allow-loopback", "--json", "--partitions", "8"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"{urls_file}:2: " in captured.err and f"{urls_file}:4: " in captured.err
    summary = json.loads(captured.out)
    assert (summary["total"], summary["junk_lines"], summary["actions"]["delist"]) == (len(urls), 2, len(HOSTS))
    assert sorted(merged_urls(out)) == sorted(urls)
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    lost = min(int(p) for p in json.loads((out / MANIFEST).read_text())["completed"])
    part_path(out, lost).unlink()  # a part lost after the manifest recorded it: redone on resume
    assert main([*argv, "--resume"]) == 1
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["partitions_resumed"] == resumed["partitions"] - 1
    assert sorted(merged_urls(out)) == sorted(urls)


def test_an_unreachable_scheduler_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "u.txt").write_text("http://127.0.0.1:9/x\n")
    assert main(["crawl", str(tmp_path / "u.txt"), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9", "--db", str(tmp_path / "s.db")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("modelsieve: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9") and error.count("\n") == 1


def test_a_backlog_of_files_is_matched_on_the_cluster(client: object, job: tuple[Path, str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, db, _ = job
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    listing = [str(tmp_path / name) for name in FILES] + [str(tmp_path / "gone.safetensors")]
    (tmp_path / "catalogue.txt").write_text("# catalogue\n" + "\n".join(listing) + "\n")
    scheduler = client.scheduler.address  # type: ignore[attr-defined]
    assert main(["match", str(tmp_path / "catalogue.txt"), "--scheduler", scheduler, "--db", db, "--json"]) == 1
    captured = capsys.readouterr()
    results = {Path(r["path"]).name: r["verdict"] for r in map(json.loads, captured.out.splitlines())}
    assert results == {name: "exact" if name == "m3.safetensors" else "none" for name in FILES}
    assert "gone.safetensors" in captured.err and captured.err.count("\n") == 1
