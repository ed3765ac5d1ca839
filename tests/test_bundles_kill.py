"""A bundle import is one transaction: killed mid-import nothing changes; readers never wait for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelsieve.hashlists.bundles import PAUSE_ENV, export_list, import_bundle
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.signing import generate_key_files, load_private_key
from modelsieve.hashlists.sqlite_store import SQLiteStore
from modelsieve.hashlists.store import open_store
from modelsieve.hashlists.trust import trust_publisher
from tests.store_backends import StoreLocations

ENTRIES = 3_000


@pytest.fixture
def setup(tmp_path: Path, store_locations: StoreLocations) -> tuple[Path, str, Path]:
    """A publisher's bundle of ENTRIES entries; an importer store (on each backend) already holding one local entry."""
    generate_key_files(tmp_path / "pub.key", tmp_path / "pub.pub")
    with SQLiteStore(tmp_path / "pub.db") as publisher:
        publisher.create_list("reports", publisher="pub")
        publisher.add_entries("reports", (NewEntry(category="2c", digests={"sha256": f"{i:064x}"}) for i in range(ENTRIES)))
        export_list(publisher, "reports", load_private_key(tmp_path / "pub.key"), tmp_path / "b.jsonl")
    importer_location = store_locations.new("sub")
    with open_store(importer_location) as importer:
        trust_publisher(importer, "pub", (tmp_path / "pub.pub").read_text(), "full")
        importer.create_list("mine")
        importer.add_entries("mine", [NewEntry(category="2c", digests={"md5": "a" * 32})])
    return tmp_path / "b.jsonl", importer_location, tmp_path / "pause"


def start_import(bundle: Path, db: str, marker: Path) -> subprocess.Popen[bytes]:
    code = "import sys; from modelsieve.api.cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, "list", "import", str(bundle), "--db", db],
        env={**os.environ, PAUSE_ENV: str(marker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the import never reached its pause point"
        time.sleep(0.02)


def snapshot(db: str) -> tuple:
    with open_store(db) as store:
        entries = [e.to_json() for e in store.entries()]
        return store.last_seq(), entries, store.lists(), store.sync_position("pub", "reports")


def test_an_import_killed_mid_transaction_leaves_the_store_as_it_was(setup: tuple[Path, str, Path]) -> None:
    bundle, db, marker = setup
    before = snapshot(db)
    process = start_import(bundle, db, marker)
    wait_for(Path(f"{marker}.paused"), process)  # every entry is written, the commit not yet done
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert snapshot(db) == before
    with open_store(db) as store:  # and the same bundle imports cleanly afterwards
        assert import_bundle(store, bundle).entries == ENTRIES


def test_readers_keep_matching_the_old_state_while_an_import_runs(setup: tuple[Path, str, Path]) -> None:
    bundle, db, marker = setup
    with open_store(db) as store:
        matcher = Matcher(store, refresh_interval=0)
        process = start_import(bundle, db, marker)
        wait_for(Path(f"{marker}.paused"), process)
        assert [m.kind for m in matcher.match_digests({"md5": "a" * 32})] == ["md5"], "readers are not blocked"
        assert matcher.match_digests({"sha256": f"{7:064x}"}) == [], "uncommitted entries are invisible"
        Path(f"{marker}.resume").touch()
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert b"3000 entries" in out
        assert [m.origin for m in matcher.match_digests({"sha256": f"{7:064x}"})] == ["pub"]
