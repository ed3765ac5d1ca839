"""The fingerprint, compare and bases commands, run through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelsieve.api.cli import main
from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.fuzzy import Fingerprint


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    family = syn.Family(5, syn.Architecture(scale=20, text_layers=2, vocab=300))
    listed = family.fine_tune(1, 0.005)
    syn.write_safetensors(folder / "base.safetensors", family.checkpoint(family.base))
    syn.write_safetensors(folder / "listed.safetensors", syn.resave(family.checkpoint(listed, ema=True), "fp16"))
    syn.write_safetensors(folder / "merged.safetensors", syn.resave(syn.weighted_sum(listed, family.fine_tune(2, 0.005), 0.5), "bf16"))
    syn.write_safetensors(folder / "sibling.safetensors", family.fine_tune(3, 0.005))
    lora = family.lora(1)
    syn.write_safetensors(folder / "lora.safetensors", syn.kohya_layout(lora, "fp16"))
    syn.write_safetensors(folder / "baked.safetensors", family.merge_lora(family.base, lora, 0.7))
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_register_a_base_fingerprint_and_compare(models: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MODELSIEVE_FINGERPRINT_KEY", raising=False)
    db = str(tmp_path / "store.db")
    assert run(capsys, "bases", "add", str(models / "base.safetensors"), "--name", "sd15", "--db", db)[0] == 0
    status, out, _ = run(capsys, "bases", "list", "--json", "--db", db)
    assert status == 0 and json.loads(out)["name"] == "sd15"

    status, out, _ = run(capsys, "fingerprint", str(models / "listed.safetensors"), str(models / "lora.safetensors"),
                         "-o", str(tmp_path / "prints"), "--json", "--db", db)
    records = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [r["kind"] for r in records] == ["checkpoint", "lora"] and records[0]["base"] == "sd15"
    saved = Fingerprint.from_bytes((tmp_path / "prints" / "listed.msfp").read_bytes())
    assert Fingerprint.from_json(records[0]).to_bytes() == saved.to_bytes()

    status, out, _ = run(capsys, "compare", str(models / "merged.safetensors"), str(tmp_path / "prints" / "listed.msfp"),
                         "--json", "--db", db)
    result = json.loads(out)
    assert status == 0 and result["match"] and result["similarity"] > 0.5 and "unet" in result["components"]
    status, out, _ = run(capsys, "compare", str(models / "sibling.safetensors"), str(models / "listed.safetensors"), "--db", db)
    assert status == 0 and "no match" in out and "uncalibrated" in out
    status, out, _ = run(capsys, "compare", str(models / "baked.safetensors"), str(tmp_path / "prints" / "lora.msfp"),
                         "--json", "--db", db)
    assert json.loads(out)["coefficient"] == pytest.approx(0.7, abs=0.01)


def test_base_option_instead_of_a_store(models: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MODELSIEVE_DB", str(tmp_path / "unused.db"))
    status, out, _ = run(capsys, "compare", str(models / "merged.safetensors"), str(models / "listed.safetensors"),
                         "--base", str(models / "base.safetensors"))
    assert status == 0 and "near match" in out


def test_errors_are_one_line(models: Path, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "store.db")
    status, _, err = run(capsys, "bases", "add", str(models / "lora.safetensors"), "--name", "x", "--db", db)
    assert status == 2 and err.startswith("modelsieve: error:") and "raw checkpoint" in err
    status, _, err = run(capsys, "compare", str(models / "listed.safetensors"), str(models / "sibling.safetensors"), "--db", db)
    assert status == 2 and "raw checkpoint" in err  # no base registered in this store
    key = tmp_path / "key.txt"
    key.write_text("other:" + "ab" * 16)
    run(capsys, "fingerprint", str(models / "lora.safetensors"), "-o", str(tmp_path / "public.msfp"), "--db", db)
    status, _, err = run(capsys, "compare", str(models / "lora.safetensors"), str(tmp_path / "public.msfp"),
                         "--fingerprint-key", str(key), "--db", db)
    assert status == 2 and "different keys" in err and len(err.strip().splitlines()) == 1
    status, _, err = run(capsys, "fingerprint", str(tmp_path / "missing.safetensors"), "--db", db)
    assert status == 2 and "no such file" in err


def test_bases_refuse_duplicates_unless_replaced_and_can_be_removed(models: Path, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "store.db")
    base = str(models / "base.safetensors")
    assert run(capsys, "bases", "add", base, "--name", "sd15", "--db", db)[0] == 0
    status, _, err = run(capsys, "bases", "add", base, "--name", "sd15", "--db", db)
    assert status == 2 and "already registered" in err
    assert run(capsys, "bases", "add", base, "--name", "sd15", "--replace", "--db", db)[0] == 0
    assert run(capsys, "bases", "remove", "sd15", "--db", db)[0] == 0
    assert run(capsys, "bases", "list", "--db", db)[1] == ""
    status, _, err = run(capsys, "bases", "remove", "sd15", "--db", db)
    assert status == 2 and "no base named" in err


def test_compare_escapes_block_names_taken_from_tensor_names(tmp_path: Path, capsys) -> None:
    """Block names come from the file's tensor names: raw, an ESC sequence in one drives the terminal."""
    import numpy as np
    from safetensors.numpy import save_file

    module = "lora_unet_down_blocks_\x1b[2J_attentions_0_proj_in"
    rng = np.random.default_rng(8)
    lora = {f"{module}.lora_up.weight": rng.standard_normal((8, 2)).astype(np.float32),
            f"{module}.lora_down.weight": rng.standard_normal((2, 8)).astype(np.float32)}
    save_file(lora, tmp_path / "a.safetensors")
    save_file(lora, tmp_path / "b.safetensors")
    status, out, _ = run(capsys, "compare", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                         "--db", str(tmp_path / "store.db"))
    assert status == 0 and "\x1b" not in out and "unet.down_blocks.\\x1b[2J" in out
