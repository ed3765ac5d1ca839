"""Fuzzy matching through the sign-code index, and whole files through match_path / the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelsieve.api.cli import main
from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.fuzzy import FingerprintKey, fingerprint_model, fingerprint_tensors
from modelsieve.fingerprint.readers import open_model
from modelsieve.hashlists.bundles import export_list, import_bundle
from modelsieve.hashlists.curation import retract
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import NewEntry
from modelsieve.hashlists.signing import generate_key_files, load_private_key
from modelsieve.hashlists.sqlite_store import SQLiteStore
from modelsieve.hashlists.trust import trust_publisher
from tests.hashlists_fixtures import lora_arrays, lora_fingerprint

LISTED_SEED = 1


def list_fingerprints(store: SQLiteStore, seeds: range) -> dict[int, str]:
    ids = {}
    for seed in seeds:
        entry = store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=lora_fingerprint(seed).to_bytes(), evidence="fuzzy"))
        assert entry is not None
        ids[seed] = entry.id
    return ids


def test_a_resaved_copy_matches_near_and_unrelated_models_do_not(store: SQLiteStore) -> None:
    ids = list_fingerprints(store, range(1, 30))
    matcher = Matcher(store)
    [match] = matcher.match_fingerprint(lora_fingerprint(LISTED_SEED, dtype=np.float16))
    assert (match.entry_id, match.kind, match.category) == (ids[LISTED_SEED], "fuzzy", "2c")
    assert match.score > 0.99 and match.coefficient == pytest.approx(1.0, abs=0.01) and match.similarity is not None
    assert matcher.match_fingerprint(lora_fingerprint(999)) == []


def test_a_partly_merged_copy_matches_with_its_coefficient(store: SQLiteStore) -> None:
    ids = list_fingerprints(store, range(1, 5))
    listed, other = lora_arrays(LISTED_SEED), lora_arrays(77)
    merged = {k: np.concatenate([0.8 * listed[k], 0.5 * other[k]], axis=1) if k.endswith("lora_up.weight") else
              np.concatenate([listed[k], other[k]], axis=0) if k.endswith("lora_down.weight") else 2 * listed[k]
              for k in listed}  # ΔW = 0.8 ΔW_listed + 0.5 ΔW_other (rank 8)
    matches = Matcher(store).match_fingerprint(fingerprint_tensors(merged))
    assert [m.entry_id for m in matches] == [ids[LISTED_SEED]]
    assert matches[0].coefficient == pytest.approx(0.8, abs=0.1)


def test_retracted_fingerprints_and_other_keys_never_match(store: SQLiteStore) -> None:
    ids = list_fingerprints(store, range(1, 3))
    matcher = Matcher(store, refresh_interval=0)
    other_key = fingerprint_tensors(lora_arrays(LISTED_SEED), FingerprintKey("team", b"a secret of sixteen+ bytes"))
    assert matcher.match_fingerprint(other_key) == [], "fingerprints of another key are not comparable"
    retract(store, ids[LISTED_SEED])
    assert matcher.match_fingerprint(lora_fingerprint(LISTED_SEED)) == []


def test_fingerprints_travel_in_bundles(store: SQLiteStore, tmp_path: Path) -> None:
    ids = list_fingerprints(store, range(1, 4))
    generate_key_files(tmp_path / "k.key", tmp_path / "k.pub")
    export_list(store, "main", load_private_key(tmp_path / "k.key"), tmp_path / "b.jsonl")
    with SQLiteStore(tmp_path / "other.db") as other:
        trust_publisher(other, "platform-a", (tmp_path / "k.pub").read_text(), "full")
        import_bundle(other, tmp_path / "b.jsonl")
        [match] = Matcher(other).match_fingerprint(lora_fingerprint(LISTED_SEED, dtype=np.float16))
        assert (match.entry_id, match.origin) == (ids[LISTED_SEED], "platform-a")


SMALL_FAMILY = syn.Family(5, syn.Architecture(scale=20, text_layers=2, vocab=300))


def write_loras(folder: Path, loras: dict[str, tuple[syn.LoraFactors, str]]) -> None:
    for name, (lora, dtype) in loras.items():
        syn.write_safetensors(folder / f"{name}.safetensors", syn.kohya_layout(lora, dtype))


def list_file(store: SQLiteStore, path: Path) -> None:
    with open_model(path) as reader:
        store.add_entry("main", NewEntry(category="2c", kind="lora", fingerprint=fingerprint_model(reader).to_bytes(), evidence="fuzzy"))


def modules(lora: syn.LoraFactors, keep: Callable[[str], bool]) -> syn.LoraFactors:
    return syn.LoraFactors({module: factors for module, factors in lora.modules.items() if keep(module)})


def test_a_benign_lora_on_the_one_module_of_a_small_listed_lora_is_no_match(store: SQLiteStore, tmp_path: Path) -> None:
    """A listed one-module LoRA and an independent LoRA on the same module scored 0.634 without a
    cohort (over one tensor chance similarity spreads far wider than the 0.35 threshold assumes),
    and the benign one was reported "near"; a re-saved copy of the listed one still matches."""
    module = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    listed = modules(SMALL_FAMILY.lora(1), lambda m: m == module)
    write_loras(tmp_path, {"listed": (listed, "fp32"), "copy": (listed, "fp16"), "benign": (modules(SMALL_FAMILY.lora(8), lambda m: m == module), "fp32")})
    list_file(store, tmp_path / "listed.safetensors")
    matcher = Matcher(store)
    assert matcher.match_path(tmp_path / "benign.safetensors").verdict == "none"
    [match] = matcher.match_path(tmp_path / "copy.safetensors").matches
    assert match.kind == "fuzzy" and match.score > 0.99 and match.calibration is not None and match.calibration.tensors == 1


def test_a_lora_without_index_role_modules_is_found_by_its_near_copies(store: SQLiteStore, tmp_path: Path) -> None:
    """The candidate index reads cross-attention key/value and text-encoder attention modules; a
    LoRA on the other modules only (96 here) had no code at all, so its rank-8 fp16 copy (score
    0.986) was "none": such adapters could not be fuzzy-matched."""
    other_modules = lambda m: ".attn2.to_k" not in m and ".attn2.to_v" not in m and "self_attn" not in m  # noqa: E731
    listed = modules(SMALL_FAMILY.lora(1), other_modules)
    write_loras(tmp_path, {"listed": (listed, "fp32"), "copy": (syn.resize_lora(listed, 8), "fp16"), "benign": (modules(SMALL_FAMILY.lora(2), other_modules), "fp32")})
    list_file(store, tmp_path / "listed.safetensors")
    matcher = Matcher(store)
    [match] = matcher.match_path(tmp_path / "copy.safetensors").matches
    assert match.kind == "fuzzy" and match.score > 0.95
    assert matcher.match_path(tmp_path / "benign.safetensors").verdict == "none"
    # a row stored before such fingerprints got codes (fp_codes '{}') gets them when the index loads
    store._execute("UPDATE entries SET fp_codes = '{}'")  # as an older version stored it
    assert [m.score > 0.95 for m in Matcher(store).match_path(tmp_path / "copy.safetensors").matches] == [True]


def test_files_are_listed_and_matched_exactly_and_near_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "cli.db")
    listed, resaved, unrelated = tmp_path / "listed.safetensors", tmp_path / "fp16.safetensors", tmp_path / "other.safetensors"
    save_file(lora_arrays(LISTED_SEED), str(listed))
    save_file({k: v.astype(np.float16) for k, v in lora_arrays(LISTED_SEED).items()}, str(resaved))
    save_file(lora_arrays(5), str(unrelated))
    not_a_model = tmp_path / "notes.bin"
    not_a_model.write_bytes(b"\x00" * 100)
    assert main(["list", "create", "reports", "--db", db]) == 0
    capsys.readouterr()
    assert main(["list", "add", "reports", str(listed), "--db", db, "--json"]) == 0
    [added] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert added["kind"] == "lora" and added["fingerprint_bytes"] > 0 and set(added["digests"]) >= {"sha256", "autov3", "md5"}
    assert main(["match", str(listed), str(resaved), str(unrelated), str(not_a_model), "--db", db, "--json"]) == 0
    results = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert results["listed.safetensors"]["verdict"] == "exact"
    assert [m["kind"] for m in results["listed.safetensors"]["matches"]] == ["sha256"], "no duplicate fuzzy match"
    assert results["fp16.safetensors"]["verdict"] == "near"
    [near] = results["fp16.safetensors"]["matches"]
    assert near["entry_id"] == added["entry_id"] and near["kind"] == "fuzzy" and near["score"] > 0.99
    assert results["other.safetensors"] == {"path": str(unrelated), "verdict": "none", "matches": []}
    assert results["notes.bin"]["verdict"] == "none" and "not fingerprinted" in results["notes.bin"]["problems"][0]
    assert main(["match", str(resaved), "--db", db]) == 0
    human = capsys.readouterr().out
    assert f"fp16.safetensors: near\n  {added['entry_id']} list reports, category 2c" in human
