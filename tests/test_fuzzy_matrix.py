"""A small robustness matrix on synthetic SD-1.5-like families (the full one is bench/nearcopy.py)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.fuzzy import (
    DEFAULT_THRESHOLD,
    RESIDUAL_THRESHOLD,
    Background,
    BaseModel,
    Fingerprint,
    FingerprintKey,
    compare,
    fingerprint_model,
    fingerprint_tensors,
    select_tensors,
)
from modelsieve.fingerprint.readers import open_model

KEY = FingerprintKey("test", b"modelsieve test key 0001")
ARCH = syn.Architecture(scale=20, text_layers=2, vocab=300)
SIZE = 0.005


@functools.cache
def family(shared: bool = True) -> syn.Family:
    return syn.Family(7, ARCH, *((0.1, 0.3) if shared else (0.0, 0.0)))


@functools.cache
def base(shared: bool = True) -> BaseModel:
    return BaseModel("sd15", fingerprint_tensors(family(shared).checkpoint(family(shared).base), KEY))


def fp(tensors: syn.Tensors, shared: bool = True) -> Fingerprint:
    return fingerprint_tensors(tensors, KEY, [base(shared)], require_base=True)


@functools.cache
def listed(shared: bool = True) -> Fingerprint:
    return fp(family(shared).checkpoint(family(shared).fine_tune(1, SIZE), ema=True), shared)


@functools.cache
def tuned(seed: int, shared: bool = True) -> syn.Tensors:
    return family(shared).fine_tune(seed, SIZE)


COPIES = {
    "fp16": lambda f: syn.resave(f.fine_tune(1, SIZE), "fp16"),
    "bf16": lambda f: syn.resave(f.fine_tune(1, SIZE), "bf16"),
    "diffusers names": lambda f: f.diffusers_names(f.fine_tune(1, SIZE)),
    "pruned text encoder and VAE": lambda f: syn.drop(f.fine_tune(1, SIZE), "cond_stage_model.", "first_stage_model."),
    "further fine-tune (+50 %)": lambda f: syn.apply_delta(f.fine_tune(1, SIZE), f.delta(50, SIZE), 0.5),
    "noise = delta norm": lambda f: syn.add_noise(f.fine_tune(1, SIZE), f.delta(1, SIZE), 1.0, seed=3),
}


@pytest.mark.parametrize("row", COPIES)
def test_near_copies_match(row: str) -> None:
    result = compare(fp(COPIES[row](family())), listed())
    assert result.is_match(), (row, result.similarity)
    assert result.similarity > (0.95 if row in ("fp16", "bf16", "diffusers names", "pruned text encoder and VAE") else 0.6)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7])
def test_weighted_sum_merges_match_and_estimate_alpha(alpha: float) -> None:
    merged = compare(fp(syn.weighted_sum(family().fine_tune(1, SIZE), tuned(2), alpha)), listed())
    assert merged.is_match()
    independent = compare(fp(syn.weighted_sum(family(False).fine_tune(1, SIZE), tuned(2, False), alpha), False), listed(False))
    assert independent.coefficient == pytest.approx(alpha, abs=0.05)


def test_add_difference_estimates_m() -> None:
    f = family(False)
    query = syn.add_difference(tuned(3, False), f.fine_tune(1, SIZE), f.base, 0.6)
    result = compare(fp(query, False), listed(False))
    assert result.is_match() and result.coefficient == pytest.approx(0.6, abs=0.05)


@functools.cache
def background() -> Background:
    """Benign directions from a cohort of fine-tunes and LoRAs that appear nowhere else in these tests."""
    f = family()
    cohort = [fp(syn.resave(f.fine_tune(300 + j), "fp16")) for j in range(16)]
    cohort += [fingerprint_tensors(syn.kohya_layout(f.lora(400 + j)), KEY) for j in range(8)]
    return Background.from_cohort(cohort)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.7])
def test_background_removes_the_shared_direction_bias_from_merge_weights(alpha: float) -> None:
    merged = fp(syn.resave(syn.weighted_sum(family().fine_tune(1, SIZE), tuned(2), alpha), "fp16"))
    plain, removed = compare(merged, listed()), compare(merged, listed(), background=background())
    assert removed.coefficient == pytest.approx(alpha, abs=0.05)
    assert abs(removed.coefficient - alpha) < abs(plain.coefficient - alpha)  # the partner's shared part biased it
    assert removed.is_match() and removed.score == removed.residual


def test_background_removed_add_difference_and_lora_strength() -> None:
    f = family()
    add = compare(fp(syn.add_difference(tuned(3), f.fine_tune(1, SIZE), f.base, 0.6)), listed(), background=background())
    assert add.is_match() and add.coefficient == pytest.approx(0.6, abs=0.1)
    into = compare(fp(syn.resave(f.merge_lora(tuned(4), lora(), 0.7), "fp16")), listed_lora(), background=background())
    assert into.is_match() and into.coefficient == pytest.approx(0.7, abs=0.05)


def test_background_removed_siblings_fall_far_below_the_residual_threshold() -> None:
    residuals = [compare(fp(tuned(seed)), listed(), background=background()).residual for seed in range(10, 16)]
    raw = [compare(fp(tuned(seed)), listed()).similarity for seed in range(10, 16)]
    assert max(residuals) < RESIDUAL_THRESHOLD / 2 < min(raw)
    other_lora = fingerprint_tensors(syn.kohya_layout(family().lora(2, rank=32)), KEY)
    assert compare(other_lora, listed_lora(), background=background()).residual < RESIDUAL_THRESHOLD / 2


def test_a_background_refuses_other_keys_and_raw_members() -> None:
    other_key = FingerprintKey("test", b"another secret of 16+ bytes")
    with pytest.raises(FingerprintMismatchError):
        compare(fingerprint_tensors(syn.kohya_layout(lora()), other_key),
                fingerprint_tensors(syn.kohya_layout(family().lora(2)), other_key), background=background())
    with pytest.raises(FingerprintError, match="delta"):
        Background.from_cohort([fingerprint_tensors(family().fine_tune(1, SIZE), KEY)])
    with pytest.raises(FingerprintError, match="at least one"):
        Background.from_cohort([])


def test_hard_negatives_do_not_match() -> None:
    siblings = [compare(fp(tuned(seed)), listed()).similarity for seed in range(10, 16)]
    assert max(siblings) < DEFAULT_THRESHOLD
    assert min(siblings) > 0.05  # the shared benign component is there: siblings are correlated
    assert compare(fp(syn.resave(family().base, "fp16")), listed()).score < 0.05
    other = syn.Family(99, ARCH)
    with pytest.raises(FingerprintError, match="no registered base fits"):
        fp(other.fine_tune(1, SIZE))


def test_partial_fingerprint_from_selected_tensors_matches_the_full_listing() -> None:
    tensors = syn.resave(family().checkpoint(family().fine_tune(1, SIZE)), "fp16")
    infos = [syn_info(name, array) for name, array in tensors.items()]
    chosen = select_tensors(infos, budget_fraction=0.05)
    assert sum(i.nbytes for i in chosen) < 0.12 * sum(i.nbytes for i in infos)
    partial = fp({i.name: tensors[i.name] for i in chosen})
    result = compare(partial, listed())
    assert result.similarity > 0.95 and 0 < result.coverage < 0.5
    sibling_tensors = syn.resave(tuned(12), "fp16")
    sibling = fp({i.name: sibling_tensors[i.name] for i in chosen})
    assert compare(sibling, listed()).similarity < DEFAULT_THRESHOLD


def syn_info(name: str, array: np.ndarray):
    from modelsieve.fingerprint.readers import TensorInfo
    from modelsieve.fingerprint.synthetic import dtype_name

    return TensorInfo(name, dtype_name(array.dtype), tuple(array.shape))


def test_files_with_shuffled_order_and_edited_metadata_fingerprint_identically(tmp_path) -> None:
    tensors = syn.resave(family().checkpoint(family().fine_tune(1, SIZE)), "fp16")
    names = sorted(tensors)
    first = syn.write_safetensors(tmp_path / "a.safetensors", tensors, {"title": "a"})
    second = syn.write_safetensors(tmp_path / "b.safetensors", tensors, {"title": "edited"},
                                   order=list(np.random.default_rng(0).permutation(names)))
    with open_model(first) as a, open_model(second) as b:
        fa, fb = fingerprint_model(a, KEY, [base()]), fingerprint_model(b, KEY, [base()])
    assert fa.to_bytes() == fb.to_bytes()
    assert compare(fa, listed()).similarity > 0.99


# --- LoRAs --------------------------------------------------------------------------------------


@functools.cache
def lora() -> syn.LoraFactors:
    return family().lora(1, rank=32)


@functools.cache
def listed_lora() -> Fingerprint:
    return fingerprint_tensors(syn.kohya_layout(lora()), KEY)


@pytest.mark.parametrize(
    "make",
    [
        lambda: syn.peft_layout(lora(), "fp16", prefix="base_model.model."),
        lambda: syn.kohya_layout(syn.resize_lora(lora(), 16), "fp16"),
        lambda: syn.kohya_layout(syn.resize_lora(lora(), 8)),
        lambda: syn.peft_layout(syn.resize_lora(lora(), 4)),
    ],
    ids=["peft fp16", "resized 16", "resized 8", "resized 4 peft"],
)
def test_lora_conversions_match(make) -> None:
    result = compare(fingerprint_tensors(make(), KEY), listed_lora())
    assert result.is_match() and result.similarity > 0.85


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_lora_merged_into_base_or_a_fine_tune_matches_and_estimates_strength(strength: float) -> None:
    into_base = compare(fp(family().merge_lora(family().base, lora(), strength)), listed_lora())
    assert into_base.similarity > 0.99 and into_base.coefficient == pytest.approx(strength, abs=0.02)
    into_tune = compare(fp(family().merge_lora(tuned(4), lora(), strength)), listed_lora())
    assert into_tune.is_match()
    # the listed checkpoint side works too: the LoRA query against a merged listing
    assert compare(listed_lora(), fp(family().merge_lora(family().base, lora(), strength))).similarity > 0.99


def test_a_different_lora_on_the_same_modules_does_not_match() -> None:
    other = fingerprint_tensors(syn.kohya_layout(family().lora(2, rank=32)), KEY)
    assert compare(other, listed_lora()).similarity < DEFAULT_THRESHOLD


# --- bad input ----------------------------------------------------------------------------------


def test_lora_factors_that_do_not_multiply_are_left_out_or_refused() -> None:
    """Loaders skip a module they cannot apply: it is left out and counted; alone, it is refused."""
    tensors = syn.kohya_layout(lora())
    name = next(n for n in tensors if n.endswith("lora_down.weight"))
    tensors[name] = tensors[name][:-1]
    assert fingerprint_tensors(tensors, KEY).source["malformed_left_out"] == 1
    module = name.removesuffix(".lora_down.weight")
    with pytest.raises(FingerprintError, match="do not multiply"):
        fingerprint_tensors({k: v for k, v in tensors.items() if k.startswith(module + ".")}, KEY)


def test_models_without_float_tensors_and_mismatched_keys_are_refused() -> None:
    with pytest.raises(FingerprintError, match="no floating-point"):
        fingerprint_tensors({"ids": np.arange(10)}, KEY)
    other_key = FingerprintKey("test", b"another secret of 16+ bytes")
    with pytest.raises(FingerprintMismatchError):
        compare(fingerprint_tensors(syn.kohya_layout(lora()), other_key), listed_lora())
    raw = fingerprint_tensors(family().fine_tune(1, SIZE), KEY)
    assert raw.base is None
    with pytest.raises(FingerprintError, match="raw checkpoint"):
        compare(raw, listed())


def test_sharded_checkpoints_and_diffusers_folders_match_through_the_readers(tmp_path) -> None:
    tuned = syn.resave(family().fine_tune(1, SIZE), "fp16")
    index = syn.write_sharded(tmp_path / "sharded", family().checkpoint(tuned), 3)
    folder = syn.write_diffusers(tmp_path / "pipeline", family().diffusers_names(tuned))
    for path in (index, folder):
        with open_model(path) as reader:
            result = compare(fingerprint_model(reader, KEY, [base()]), listed())
        assert result.similarity > 0.99 and result.coverage > 0.99, path


def test_tensors_under_unknown_names_are_resolved_by_shape_and_sketch_against_the_base() -> None:
    tuned = syn.resave(family().fine_tune(1, SIZE), "fp16")
    scrambled = {f"layer{i:04d}.w" if "input_blocks" in name else name: array
                 for i, (name, array) in enumerate(sorted(tuned.items()))}
    query = fp(scrambled)
    assert not any(name.startswith("other.") for name in query.sketches)
    result = compare(query, listed())
    assert result.similarity > 0.99 and result.coverage > 0.99
