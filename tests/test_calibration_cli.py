"""`modelsieve bases add-background|list-background|remove-background` and calibrated `match` output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelsieve.api.cli import main
from modelsieve.fingerprint import synthetic as syn
from tests.calibration_fixtures import COHORT_SEEDS, family

KEY_TEXT = "calibration-test:" + b"modelsieve calibration test key".hex()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict]]:
    status = main(list(argv))
    out = capsys.readouterr().out
    return status, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_a_lora_cohort_from_the_cli_calibrates_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("MODELSIEVE_FINGERPRINT_KEY", KEY_TEXT)
    db = str(tmp_path / "store.db")
    syn.write_safetensors(tmp_path / "base.safetensors", family().checkpoint(family().base))
    cohort_dir = tmp_path / "benign"
    cohort_dir.mkdir()
    for seed in COHORT_SEEDS:
        syn.write_safetensors(cohort_dir / f"lora-{seed}.safetensors", syn.peft_layout(family().lora(seed)))
    syn.write_safetensors(tmp_path / "listed.safetensors", syn.peft_layout(family().lora(1)))
    syn.write_safetensors(tmp_path / "copy.safetensors", syn.peft_layout(family().lora(1), "fp16"))
    syn.write_safetensors(tmp_path / "sibling.safetensors", syn.peft_layout(family().lora(12)))

    assert run(capsys, "bases", "add-background", str(cohort_dir), "--base", "sd15", "--db", db)[0] == 2  # no such base yet
    assert run(capsys, "bases", "add", str(tmp_path / "base.safetensors"), "--name", "sd15", "--db", db)[0] == 0
    status, added = run(capsys, "bases", "add-background", str(cohort_dir), "--base", "sd15", "--db", db, "--json")
    assert status == 0 and len(added) == len(COHORT_SEEDS) and {a["kind"] for a in added} == {"lora"}
    assert run(capsys, "bases", "add-background", str(cohort_dir), "--base", "sd15", "--db", db, "--json") == (0, [])
    assert len(run(capsys, "bases", "list-background", "--base", "sd15", "--db", db, "--json")[1]) == len(COHORT_SEEDS)

    assert main(["list", "create", "reports", "--db", db]) == 0
    assert main(["list", "add", "reports", str(tmp_path / "listed.safetensors"), "--db", db]) == 0
    capsys.readouterr()
    status, results = run(capsys, "match", str(tmp_path / "copy.safetensors"), str(tmp_path / "sibling.safetensors"), "--db", db, "--json")
    by_name = {Path(r["path"]).name: r for r in results}
    [near] = by_name["copy.safetensors"]["matches"]
    assert near["calibrated"] is True and near["decision"] == "action" and near["false_match_rate"] < 1e-6
    assert near["cohort_size"] == len(COHORT_SEEDS) and near["normalised"] > near["similarity"]
    assert by_name["sibling.safetensors"]["verdict"] == "none"

    status, [pair] = run(capsys, "compare", str(tmp_path / "sibling.safetensors"), str(tmp_path / "listed.safetensors"), "--db", db, "--json")
    assert pair["similarity"] > pair["threshold"] and pair["calibration"]["calibrated"] is True and pair["decision"] is None
    assert main(["compare", str(tmp_path / "copy.safetensors"), str(tmp_path / "listed.safetensors"), "--db", db]) == 0
    assert "near match (action)" in capsys.readouterr().out
    assert main(["match", str(tmp_path / "copy.safetensors"), "--db", db]) == 0
    assert "false match ≤ 1 in 10^" in capsys.readouterr().out
    assert main(["bases", "remove-background", added[0]["id"][:12], "--db", db]) == 0
    assert len(run(capsys, "bases", "list-background", "--db", db, "--json")[1]) == len(COHORT_SEEDS) - 1
