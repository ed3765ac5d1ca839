"""Resumable crawl jobs and the `modelsieve crawl` command: junk input, resume, SIGKILL mid-crawl."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.api.cli import main
from modelsieve.crawler.inputs import BadLine, bounded_lines, parse_line, read_targets
from modelsieve.crawler.model import CrawlTarget
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.crawler_fakes import LOG, file_host, serve_in_thread, synthetic_safetensors

LISTED = synthetic_safetensors(seed=21, tensors=4, width=16)
OTHER = synthetic_safetensors(seed=22, tensors=4, width=16)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    with SQLiteStore(path) as store:
        store.create_list("demo", publisher="test")
        store.add_entry("demo", NewEntry(category="2c", digests={"sha256": hashlib.sha256(LISTED).hexdigest()}, source="synthetic"))
    return path


@pytest.fixture
def host() -> Iterator[tuple[int, object]]:
    app = file_host({"x": LISTED, "z": OTHER}, delay=0.02)
    with serve_in_thread(app) as (port, _loop):
        yield port, app


def crawl(*args: str) -> int:
    return main(["crawl", *args])


def output_urls(path: Path) -> Counter[str]:
    return Counter(json.loads(line)["url"] for line in path.read_text().splitlines())


def test_the_command_checks_every_url_once_and_reports_junk_lines(tmp_path, db, host, capsys) -> None:
    port, _ = host
    base = f"http://127.0.0.1:{port}"
    links = tmp_path / "links.txt"
    links.write_text(
        "\n".join(
            [
                "# links reported by users",
                f"{base}/files/x",
                "not a url at all",
                json.dumps({"url": f"{base}/files/z", "context": {"post": 17}}),
                f"{base}/files/x",  # a repeat: checked once
                '{"url": 5}',
                "ftp://example.org/model.safetensors",
                "",
            ]
        )
    )
    out = tmp_path / "recs.jsonl"
    status = crawl(str(links), "--out", str(out), "--db", str(db), "--allow-loopback", "--json")
    captured = capsys.readouterr()
    assert status == 1  # done, but junk lines were reported
    assert f"{links}:3: " in captured.err and f"{links}:6: " in captured.err and f"{links}:7: " in captured.err
    assert "1 repeated URLs" in captured.err
    records = {r["url"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {f"{base}/files/x", f"{base}/files/z"}
    assert records[f"{base}/files/x"]["action"] == "delist"
    assert records[f"{base}/files/z"]["action"] == "none" and records[f"{base}/files/z"]["context"] == {"post": 17}
    summary = json.loads(captured.out)
    assert summary["total"] == summary["done"] == 2 and summary["junk_lines"] == 3
    assert summary["actions"] == {"delist": 1, "none": 1}


def test_an_existing_crawl_needs_resume_and_resuming_a_finished_one_adds_nothing(tmp_path, db, host, capsys) -> None:
    port, _ = host
    links = tmp_path / "links.txt"
    links.write_text("".join(f"http://127.0.0.1:{port}/files/z?n={i}\n" for i in range(5)))
    out = tmp_path / "recs.jsonl"
    args = [str(links), "--out", str(out), "--db", str(db), "--allow-loopback"]
    assert crawl(*args) == 0
    assert crawl(*args) == 2
    assert "--resume" in capsys.readouterr().err
    assert crawl(*args, "--resume") == 0
    assert sum(output_urls(out).values()) == 5
    links.write_text("http://127.0.0.1/other\n")
    assert crawl(*args, "--resume") == 2
    assert "is not the input" in capsys.readouterr().err


def test_a_crawl_resumes_only_in_the_mode_it_started_with(tmp_path, db, host, capsys) -> None:
    """Resuming a `--mode host` crawl without the flag would have appended delist recommendations
    to an output of takedowns."""
    port, _ = host
    links = tmp_path / "links.txt"
    links.write_text("".join(f"http://127.0.0.1:{port}/files/x?n={i}\n" for i in range(3)))
    out = tmp_path / "recs.jsonl"
    args = [str(links), "--out", str(out), "--db", str(db), "--allow-loopback"]
    assert crawl(*args, "--mode", "host") == 0
    assert crawl(*args, "--resume") == 2
    assert "started with --mode host: resume it with --mode host" in capsys.readouterr().err
    assert crawl(*args, "--resume", "--mode", "host") == 0
    assert {json.loads(line)["action"] for line in out.read_text().splitlines()} == {"takedown"}


def test_resume_cuts_a_torn_line_and_keeps_lines_written_after_the_last_commit(tmp_path, db, host) -> None:
    port, app = host
    links = tmp_path / "links.txt"
    urls = [f"http://127.0.0.1:{port}/files/z?n={i}" for i in range(12)]
    links.write_text("\n".join(urls) + "\n")
    out = tmp_path / "recs.jsonl"
    args = [str(links), "--out", str(out), "--db", str(db), "--allow-loopback"]
    assert crawl(*args) == 0
    # Recreate what a kill leaves: the last 4 lines written but not committed, and one more
    # recommendation torn in the middle of its line (its URL not marked done either).
    lines = out.read_bytes().splitlines(keepends=True)
    committed, uncommitted = lines[:7], lines[7:11]
    torn = lines[11][: len(lines[11]) // 2]
    out.write_bytes(b"".join(committed + uncommitted) + torn)
    unmarked = [json.loads(line)["url"] for line in lines[7:]]
    with contextlib.closing(sqlite3.connect(db)) as database, database:
        database.executemany("UPDATE crawl_targets SET done = 0 WHERE url = ?", [(u,) for u in unmarked])
        database.execute("UPDATE crawl_jobs SET out_offset = ?, finished_at = NULL", [len(b"".join(committed))])
    hits_before = app[LOG].hits["/files/z"]
    assert crawl(*args, "--resume") == 0
    assert output_urls(out) == Counter(urls)
    assert app[LOG].hits["/files/z"] == hits_before + 1  # only the torn one was checked again
    assert all(line.endswith("}") for line in out.read_text().splitlines())


def test_a_crawl_killed_with_sigkill_again_and_again_finishes_every_url_exactly_once(tmp_path, db, host) -> None:
    port, _ = host
    urls = [f"http://127.0.0.1:{port}/files/{'x' if i % 7 == 0 else 'z'}?n={i}" for i in range(240)]
    links = tmp_path / "links.txt"
    links.write_text("\n".join(urls) + "\n")
    out = tmp_path / "recs.jsonl"
    command = [
        sys.executable, "-c", "import sys; from modelsieve.api.cli import main; sys.exit(main())",
        "crawl", str(links), "--out", str(out), "--db", str(db), "--allow-loopback",
        "--per-host", "4", "--concurrency", "8", "--json",
    ]  # fmt: skip
    rng = random.Random(5)
    for _kill in range(2):  # kill each run mid-crawl, once its output has grown by a random amount
        before = len(out.read_bytes().splitlines()) if out.exists() else 0
        target = before + rng.randint(5, 50)
        process = subprocess.Popen(command + ["--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if out.exists() and len(out.read_bytes().splitlines()) >= target:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL  # it was still running: killed mid-crawl
    written = len(out.read_bytes().splitlines())
    assert 0 < written < len(urls)
    finished = subprocess.run(command + ["--resume"], capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr.decode()
    assert output_urls(out) == Counter(urls)
    actions = Counter(json.loads(line)["action"] for line in out.read_text().splitlines())
    assert actions == {"delist": len(urls[::7]), "none": len(urls) - len(urls[::7])}


def test_a_second_crawl_into_the_same_output_is_refused_while_the_first_runs(tmp_path, db, host, capsys) -> None:
    """Two --resume runs at once (a scheduler retrying, an impatient operator) checked the same pending
    URLs and appended them twice; the second could also cut the line the first was writing."""
    port, _ = host
    urls = [f"http://127.0.0.1:{port}/files/z?n={i}" for i in range(150)]
    links = tmp_path / "links.txt"
    links.write_text("\n".join(urls) + "\n")
    out = tmp_path / "recs.jsonl"
    args = [str(links), "--out", str(out), "--db", str(db), "--allow-loopback"]
    command = [sys.executable, "-c", "import sys; from modelsieve.api.cli import main; sys.exit(main())", "crawl", *args]
    first = subprocess.Popen(command + ["--per-host", "1", "--concurrency", "1", "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while first.poll() is None and time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 3):
            time.sleep(0.005)
        assert first.poll() is None, "the first crawl ended before the second could start"
        assert crawl(*args, "--resume") == 2
        err = capsys.readouterr().err
        assert "another crawl" in err and err.count("\n") == 1
    finally:
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()  # type: ignore[union-attr]
    assert output_urls(out) == Counter(urls)


URL_TEXT = st.one_of(
    st.text(max_size=60),
    st.builds(lambda host, path: f"https://{host}/{path}", st.from_regex(r"[a-z0-9.-]{0,20}", fullmatch=True), st.text(max_size=20)),
)


@given(st.lists(st.one_of(URL_TEXT, st.builds(json.dumps, st.dictionaries(st.sampled_from(["url", "context", "x"]), st.one_of(URL_TEXT, st.integers(), st.floats(), st.dictionaries(st.text(max_size=3), st.integers() | st.floats(), max_size=2)), max_size=3))), max_size=20))
@settings(max_examples=150, deadline=None)
def test_input_parsing_never_crashes_and_accounts_for_every_line(lines: list[str]) -> None:
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    parsed = list(read_targets(lines))
    numbers = [p.line for p in parsed]
    assert numbers == sorted(set(numbers))
    for item in parsed:
        text = lines[item.line - 1]
        if isinstance(item, BadLine):
            assert item.problem and "\n" not in item.problem
        else:
            assert item.url.startswith(("http://", "https://")) and isinstance(item.context, dict)
            json.dumps(item.context, allow_nan=False)  # echoed into the output: it must stay strict JSON
            assert item.url in text or json.loads(text)["url"].strip() == item.url
    skipped = {i + 1 for i, line in enumerate(lines) if not line.strip() or line.strip().startswith("#")}
    assert set(numbers) == set(range(1, len(lines) + 1)) - skipped


def test_input_lines_keep_their_context() -> None:
    target = parse_line('{"url": "https://hf.co/a/b/resolve/main/x.safetensors", "context": {"post": 1}}', 4)
    assert target.url == "https://hf.co/a/b/resolve/main/x.safetensors" and target.context == {"post": 1} and target.line == 4
    flat = parse_line('{"url": "https://a.org/m", "reporter": "u1"}', 1)
    assert flat.context == {"reporter": "u1"}
    assert isinstance(parse_line("https://a.org/has space", 2), BadLine)
    assert parse_line("   # comment", 3) is None


@pytest.mark.parametrize("number", ["1" * 5000, "NaN", "Infinity", "-Infinity", "1e999"])
def test_a_json_line_whose_numbers_cannot_be_echoed_is_a_bad_line_not_a_crash(number: str) -> None:
    lines = ["https://a.org/m1", f'{{"url": "https://a.org/m2", "context": {{"n": {number}}}}}', "https://a.org/m3"]
    parsed = list(read_targets(lines))
    assert [p.url for p in parsed if not isinstance(p, BadLine)] == ["https://a.org/m1", "https://a.org/m3"]
    assert [(p.line, p.problem) for p in parsed if isinstance(p, BadLine)] == [(2, "not valid JSON")]


@pytest.mark.parametrize(
    "record", ['{"url": "https://a.org/\\ud800"}', '{"url": "https://a.org/m2", "context": {"x": "\\udfff"}}', '{"url": "https://a.org/m2", "\\ud83d": 1}']
)
def test_a_json_line_holding_a_lone_surrogate_is_a_bad_line(record: str) -> None:
    """Neither the store nor the UTF-8 output can hold it: accepted, it ended the crawl on every resume."""
    parsed = list(read_targets(["https://a.org/m1", record]))
    assert isinstance(parsed[0], CrawlTarget) and isinstance(parsed[1], BadLine) and "surrogate" in parsed[1].problem


def test_help_teaches_with_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["crawl", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--resume" in text and "never \"clean\"" in text and "--allow-loopback" in text


def test_a_missing_input_file_is_a_one_line_error(tmp_path, db, capsys) -> None:
    assert crawl(str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o.jsonl"), "--db", str(db)) == 2
    err = capsys.readouterr().err
    assert err.startswith("modelsieve: error: ") and err.count("\n") == 1


def test_a_huge_line_costs_bounded_memory_and_is_one_junk_line(tmp_path) -> None:
    """`for line in file` held a whole line: a URL file with a multi-GB line (a JSON dump, a binary
    with no NUL up front) exhausted memory before the line could be reported as too long."""
    path = tmp_path / "links.txt"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("https://a.org/m1\n")
        for _ in range(24):  # 24 MiB on one line
            handle.write("x" * (1 << 20))
        handle.write("\nhttps://a.org/m3\n")
    tracemalloc.start()
    try:
        parsed = list(read_targets(bounded_lines(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak
    assert [(p.line, getattr(p, "url", None)) for p in parsed] == [(1, "https://a.org/m1"), (2, None), (3, "https://a.org/m3")]
    assert "longer than" in parsed[1].problem


def test_a_byte_order_mark_does_not_make_the_first_url_junk(tmp_path) -> None:
    """Editors on Windows save UTF-8 with a BOM: the first line read '\\ufeffhttps://...' and was junk."""
    for first in ("https://a.org/m1", '{"url": "https://a.org/m1", "context": {"post": 1}}'):
        path = tmp_path / "links.txt"
        path.write_bytes(b"\xef\xbb\xbf" + first.encode() + b"\r\nhttps://a.org/m2\r\n")
        parsed = list(read_targets(bounded_lines(path)))
        assert [getattr(p, "url", p) for p in parsed] == ["https://a.org/m1", "https://a.org/m2"]


def test_a_utf16_url_file_is_read_and_crawled_not_refused_as_binary(tmp_path, db, host, capsys) -> None:
    """Windows PowerShell's `>` writes UTF-16 with a byte order mark: its NUL bytes made the crawl
    refuse the file as 'a model file?'."""
    port, _ = host
    urls = [f"http://127.0.0.1:{port}/files/x", f"http://127.0.0.1:{port}/files/z"]
    links = tmp_path / "links.txt"
    links.write_text("\n".join(urls) + "\n", encoding="utf-16")
    assert [p.url for p in read_targets(bounded_lines(links))] == urls
    out = tmp_path / "recs.jsonl"
    assert crawl(str(links), "--out", str(out), "--db", str(db), "--allow-loopback", "--json") == 0, capsys.readouterr().err
    assert {r["url"]: r["action"] for r in map(json.loads, out.read_text().splitlines())} == {urls[0]: "delist", urls[1]: "none"}
