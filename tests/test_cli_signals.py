"""SIGTERM (a scheduler or `kill` stopping a job) unwinds a command as Ctrl-C does: real
subprocesses, stopped mid-run; nothing half-written stays behind and a crawl resumes exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from modelsieve.fingerprint import synthetic as syn
from modelsieve.api.cli.fuzzy_inputs import FINGERPRINT_SUFFIX
from modelsieve.fingerprint.fuzzy import Fingerprint
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.crawler_fakes import file_host, serve_in_thread, synthetic_safetensors

COMMAND = [sys.executable, "-c", "import sys; from modelsieve.api.cli import main; sys.exit(main())"]


def stop_when(process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> subprocess.CompletedProcess[bytes]:
    """SIGTERM `process` once `ready()` holds (within 60 s), and wait for it to end."""
    deadline = time.monotonic() + 60
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the command ended before it could be stopped mid-run"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_sigterm_mid_fingerprint_leaves_only_whole_fingerprints_and_exits_143(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    family = syn.Family(5, syn.Architecture(scale=20, text_layers=2, vocab=300))
    syn.write_safetensors(models / "m000.safetensors", family.checkpoint(family.fine_tune(1, 0.005)))
    for number in range(1, 400):  # many names for one file: a run long enough to stop mid-way
        os.symlink(models / "m000.safetensors", models / f"m{number:03}.safetensors")
    out = tmp_path / "fingerprints"
    process = subprocess.Popen([*COMMAND, "fingerprint", "-o", str(out), str(models)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # count whole fingerprints only: the one being written (a .tmp) is removed when the run stops
    stopped = stop_when(process, lambda: out.is_dir() and len(list(out.glob(f"*{FINGERPRINT_SUFFIX}"))) >= 5)
    assert stopped.returncode == 143, stopped.stderr.decode()
    assert stopped.stderr.decode().strip().splitlines()[-1] == "modelsieve: stopped (SIGTERM)"
    written = sorted(out.iterdir())
    assert 5 <= len(written) < 400
    assert [p for p in written if p.suffix != FINGERPRINT_SUFFIX] == []  # no temp file left behind
    for path in written:
        Fingerprint.from_bytes(path.read_bytes())  # each one whole


def test_sigterm_mid_crawl_keeps_finished_lines_and_resume_checks_the_rest_once(tmp_path: Path) -> None:
    listed = synthetic_safetensors(seed=21, tensors=4, width=16)
    db = tmp_path / "store.db"
    with SQLiteStore(db) as store:
        store.create_list("demo", publisher="test")
        store.add_entry("demo", NewEntry(category="2c", digests={"sha256": hashlib.sha256(listed).hexdigest()}, source="synthetic"))
    app = file_host({"x": listed, "z": synthetic_safetensors(seed=22, tensors=4, width=16)}, delay=0.02)
    with serve_in_thread(app) as (port, _loop):
        urls = [f"http://127.0.0.1:{port}/files/{'x' if i % 5 == 0 else 'z'}?n={i}" for i in range(200)]
        links = tmp_path / "links.txt"
        links.write_text("\n".join(urls) + "\n")
        out = tmp_path / "recs.jsonl"
        crawl = [*COMMAND, "crawl", str(links), "--out", str(out), "--db", str(db), "--allow-loopback", "--per-host", "2", "--json"]
        process = subprocess.Popen(crawl, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stopped = stop_when(process, lambda: out.exists() and len(out.read_bytes().splitlines()) >= 10)
        assert stopped.returncode == 143, stopped.stderr.decode()
        assert b"Traceback" not in stopped.stderr
        lines = out.read_text().splitlines()
        assert 10 <= len(lines) < len(urls)
        assert all(json.loads(line)["url"] in urls for line in lines)  # every line whole
        finished = subprocess.run([*crawl, "--resume"], capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr.decode()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["url"] for r in records) == Counter(urls)
    assert Counter(r["action"] for r in records) == {"delist": 40, "none": 160}
