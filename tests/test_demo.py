"""`modelsieve demo`, the README's main command: end to end on loopback only, the right call per model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

LOOPBACK_ONLY = """
import ipaddress, sys

def loopback(host):
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False

def refuse_other_networks(event, args):
    if event == "socket.getaddrinfo" and not loopback(args[0]):
        raise RuntimeError(f"the demo looked up a non-loopback name: {args[0]}")
    if event in ("socket.connect", "socket.bind", "socket.sendto") and isinstance(args[1], tuple) and not loopback(args[1][0]):
        raise RuntimeError(f"the demo used a non-loopback address: {event} {args[1]}")

sys.addaudithook(refuse_other_networks)
from modelsieve.api.cli import main
sys.exit(main(sys.argv[1:]))
"""

EXPECTED_ACTIONS = {
    "base": {"none"},
    "benign": {"none"},
    "listed": {"delist"},
    "exact-copy": {"delist"},
    "near-copy": {"delist", "review"},
}


def run_demo(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOOPBACK_ONLY, "demo", "--output", str(output), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_recommends_the_right_action_for_every_model_with_evidence(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", "--json")

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["role"] for r in records} == set(EXPECTED_ACTIONS)
    for record in records:
        assert record["action"] in EXPECTED_ACTIONS[record["role"]], record
        matches = record["evidence"]["matches"]
        if record["action"] == "none":
            assert matches == [] and "not a statement that the file is harmless" in record["reason"]
        else:
            best = matches[0]
            assert best["list"] == "demo-2c" and best["category"] == "2c" and best["source"] == "demo-hotline"
            assert best["entry_id"] and best["score"] > 0
    by_file = {r["file"]: r for r in records}
    baked = by_file["lora-baked.safetensors"]["evidence"]["matches"][0]
    assert abs(baked["coefficient"] - 0.8) < 0.1  # the LoRA strength it was merged at
    assert (tmp_path / "demo" / "modelsieve.db").exists()  # the store stays, for `modelsieve serve`


def test_demo_prints_a_table_and_how_to_start_the_api_and_can_run_again(tmp_path: Path) -> None:
    first = run_demo(tmp_path / "demo")
    again = run_demo(tmp_path / "demo")

    for result in (first, again):
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert "$ modelsieve crawl" in result.stderr  # it shows the commands it runs
        assert "listed-checkpoint.safetensors" in result.stdout and "delist" in result.stdout
        assert "modelsieve serve --db" in result.stdout
        # a checkpoint judged from part of its bytes says how much, and why an exact copy matched fuzzily
        reupload = next(line for line in result.stdout.splitlines() if line.strip().startswith("reupload.safetensors"))
        assert "fuzzy match" in reupload and re.search(r"read \d+\.\d % of the file", reupload), reupload
        assert "no whole-file digest exists for them" in result.stdout
