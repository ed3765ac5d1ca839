"""A SQLite store this process cannot write (a read-only mount, another user's file) is matched against, never changed."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelsieve.api.cli import main
from modelsieve.api.http import ApiConfig, create_app
from modelsieve.hashlists.errors import StoreUnavailableError
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.sqlite_store import SQLiteStore
from tests.api_support import Api, make_keys, ready

CONTENT = b"a synthetic file the list names by its sha256\n"


def listed_store(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "lists.db"
    with SQLiteStore(path) as store:
        store.create_list("reports", publisher="p")
        store.add_entry("reports", NewEntry(category="2c", digests={"sha256": hashlib.sha256(CONTENT).hexdigest()}))
    return path


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """`tmp_path/ro`: a read-only bind mount of `tmp_path/rw` (needs the right to mount, else skipped)."""
    (tmp_path / "ro").mkdir()
    source = listed_store(tmp_path / "rw")
    mounted = subprocess.run(["mount", "--bind", str(source.parent), str(tmp_path / "ro")], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(tmp_path / "ro")], check=True, capture_output=True)
        yield tmp_path / "ro" / source.name
    finally:
        unmounted = subprocess.run(["umount", str(tmp_path / "ro")], capture_output=True)
        assert unmounted.returncode == 0, unmounted.stderr


def test_a_store_on_a_read_only_mount_matches_and_refuses_changes(read_only_mount: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It used to be 'cannot open the store ...: unable to open database file' for every command."""
    listed = tmp_path / "listed.bin"
    listed.write_bytes(CONTENT)
    assert main(["match", str(listed), "--db", str(read_only_mount), "--json"]) == 0
    assert '"verdict":"exact"' in capsys.readouterr().out
    assert main(["list", "add", "reports", "--sha256", "b" * 64, "--category", "2c", "--db", str(read_only_mount)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is read-only here" in error and "Traceback" not in error
    with SQLiteStore(read_only_mount) as store:
        assert store.read_only and len(list(store.entries())) == 1


def test_a_store_opened_read_only_reads_and_refuses_every_write(tmp_path: Path) -> None:
    path = listed_store(tmp_path / "rw")
    with SQLiteStore(path, read_only=True) as store:
        assert [e.digests["sha256"] for e in store.entries()] == [hashlib.sha256(CONTENT).hexdigest()]
        with pytest.raises(StoreUnavailableError, match="is read-only here"):
            store.add_entry("reports", NewEntry(category="2c", digests={"md5": "a" * 32}))
        with pytest.raises(StoreUnavailableError, match="is read-only here"):
            store.create_list("other", publisher="p")
    with SQLiteStore(path) as store:
        assert len(list(store.entries())) == 1 and [info.name for info in store.lists()] == ["reports"]
    with pytest.raises(StoreUnavailableError, match="no store at"):
        SQLiteStore(tmp_path / "missing.db", read_only=True)


async def test_a_server_on_a_read_only_store_answers_lookups_and_runs_no_crawl_jobs(
    aiohttp_client: Any, read_only_mount: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its job runner tried to claim a job every 2 s and logged the refusal each time."""
    keys = make_keys(tmp_path / "rw" / read_only_mount.name)  # the writable side of the mount
    config = ApiConfig(db_path=read_only_mount, audit_log=tmp_path / "audit.jsonl", crawl_jobs_dir=tmp_path / "jobs")
    api = await ready(Api(await aiohttp_client(create_app(config)), read_only_mount, keys))
    answer = await api.get_json(f"/v1/lookup?sha256={hashlib.sha256(CONTENT).hexdigest()}", "lookup")
    assert answer["verdict"] == "exact"
    await asyncio.sleep(0.3)
    assert [r.getMessage() for r in caplog.records if "crawl jobs" in r.getMessage()] == [
        "crawl jobs: not run by this server: its store is read-only here"
    ]
    await api.client.close()
