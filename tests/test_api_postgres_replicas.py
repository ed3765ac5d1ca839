"""`modelsieve serve --db postgresql://...`: two replicas on one PostgreSQL store, as real subprocesses
on loopback, with a key made by `modelsieve keys api create` and entries changed by other processes."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.store import open_store
from tests.api_support import bearer
from tests.store_backends import StoreLocations
from tests.test_api_serve import MODELSIEVE, cli, free_port, get, wait_until_ready

LISTED = "cd" * 32
SEEN_WITHIN = 30.0  # seconds; the matchers re-read the event sequence every second


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, list[str]]]:
    """(store location, admin token, base URLs of two `serve` processes on it)."""
    folder = tmp_path_factory.mktemp("replicas")
    locations = StoreLocations("postgresql", folder)
    location = locations.new("replicas")
    created = cli("keys", "api", "create", "--scope", "admin", "--name", "ops", "--db", location)
    assert created.returncode == 0, created.stderr
    servers: list[subprocess.Popen[str]] = []
    try:
        bases = []
        for number in range(2):
            port, stderr = free_port(), folder / f"stderr-{number}.txt"
            with stderr.open("w") as stderr_file:
                servers.append(subprocess.Popen(
                    [*MODELSIEVE, "serve", "--port", str(port), "--db", location, "--crawl-jobs", "0",
                     "--audit-log", str(folder / f"audit-{number}.log")],
                    stdout=subprocess.DEVNULL, stderr=stderr_file, text=True,
                ))
            bases.append(f"http://127.0.0.1:{port}")
            wait_until_ready(bases[-1], servers[-1], stderr, workers=1)
        yield location, created.stdout.strip(), bases
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.wait(10)
        locations.drop()


def lookup(base: str, token: str) -> dict:
    status, body = get(f"{base}/v1/lookup?sha256={LISTED}", token)
    assert status == 200, body
    return json.loads(body)


def eventually(check, what: str) -> None:
    """Poll `check` until it holds, for at most SEEN_WITHIN seconds."""
    deadline = time.monotonic() + SEEN_WITHIN
    while not check():
        assert time.monotonic() < deadline, f"not seen within {SEEN_WITHIN} s: {what}"
        time.sleep(0.2)


def test_replicas_see_entries_added_disputed_and_retracted_elsewhere(replicas: tuple[str, str, list[str]]) -> None:
    location, admin, (first, second) = replicas
    assert [lookup(base, admin)["verdict"] for base in (first, second)] == ["none", "none"]
    with open_store(location) as store:  # another process adds the entry after both replicas loaded
        store.create_list("main", publisher="platform-a")
        entry = store.add_entry("main", NewEntry(category="2c", digests={"sha256": LISTED}, source="hotline"))
    assert entry is not None
    for base in (first, second):
        eventually(lambda base=base: lookup(base, admin)["verdict"] == "exact", f"the new entry on {base}")
        assert lookup(base, admin)["matches"][0]["entry_id"] == entry.id

    request = urllib.request.Request(f"{first}/v1/entries/{entry.id}/opinion", data=json.dumps({"opinion": "dispute"}).encode(),
                                     headers={**bearer(admin), "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "disputed"
    # (until the second replica's refresh, its index points at the entry's old sequence number)
    eventually(lambda: [m["status"] for m in lookup(second, admin)["matches"]] == ["disputed"],
               "the dispute made through the first replica")

    retracted = cli("list", "retract", entry.id, "--reason", "false positive", "--db", location)
    assert retracted.returncode == 0, retracted.stderr
    for base in (first, second):
        eventually(lambda base=base: lookup(base, admin)["verdict"] == "none", f"the retraction on {base}")


def test_a_key_revoked_through_the_cli_stops_working_on_every_replica(replicas: tuple[str, str, list[str]]) -> None:
    location, admin, bases = replicas
    created = cli("keys", "api", "create", "--scope", "lookup", "--db", location)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert [get(f"{base}/v1/lookup?sha256={'0' * 64}", token)[0] for base in bases] == [200, 200]
    assert cli("keys", "api", "revoke", token.split("_")[1], "--db", location).returncode == 0
    for base in bases:  # verified keys are cached for a few seconds per process
        eventually(lambda base=base: get(f"{base}/v1/lookup?sha256={'0' * 64}", token)[0] == 401, f"the revocation on {base}")
