"""Adapter parsing: every layout's ΔW sketch equals the sketch of the materialised ΔW; hostile shapes fail cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.errors import FingerprintError, ModelFileError
from modelsieve.fingerprint.fuzzy import FingerprintKey, compare, fingerprint_model, fingerprint_tensors
from modelsieve.fingerprint.lora import MAX_CONFIG_BYTES, parse_peft_config, read_peft_scaling, split_adapter_key
from modelsieve.fingerprint.readers import open_model
from modelsieve.fingerprint.sketch import sketch_tensors

KEY = FingerprintKey("test", b"modelsieve test key 0001")
MODULE = "lora_unet_down_blocks_0_resnets_0_conv1"
TARGET = "unet.down_blocks.0.resnets.0.conv1.weight"


def dense_sketch(delta: np.ndarray) -> np.ndarray:
    return sketch_tensors(KEY, [("x", delta)])["x"]


def test_conv_locon_loha_and_lokr_sketch_their_delta() -> None:
    rng = np.random.default_rng(0)
    up, down = rng.standard_normal((16, 4, 1, 1)), rng.standard_normal((4, 8, 3, 3))
    locon = fingerprint_tensors({f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_down.weight": down,
                                 f"{MODULE}.alpha": np.array(2.0)}, KEY)
    expected = 0.5 * (up.reshape(16, 4) @ down.reshape(4, -1))
    np.testing.assert_allclose(locon.sketches[TARGET], dense_sketch(expected), rtol=1e-5, atol=1e-6)
    assert locon.shapes[TARGET] == (16, 72) and locon.kind == "lora"

    mid = rng.standard_normal((4, 4, 3, 3))
    cp = fingerprint_tensors({f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_mid.weight": mid,
                              f"{MODULE}.lora_down.weight": rng.standard_normal((4, 8, 1, 1))}, KEY)
    assert cp.shapes[TARGET] == (16, 72)

    w1a, w1b, w2a, w2b = (rng.standard_normal(s) for s in ((16, 4), (4, 72), (16, 4), (4, 72)))
    loha = fingerprint_tensors({f"{MODULE}.hada_w1_a": w1a, f"{MODULE}.hada_w1_b": w1b, f"{MODULE}.hada_w2_a": w2a,
                                f"{MODULE}.hada_w2_b": w2b, f"{MODULE}.alpha": np.array(4.0)}, KEY)
    np.testing.assert_allclose(loha.sketches[TARGET], dense_sketch((w1a @ w1b) * (w2a @ w2b)), rtol=1e-5, atol=1e-5)

    w1, w2a, w2b = rng.standard_normal((4, 2)), rng.standard_normal((4, 3)), rng.standard_normal((3, 36))
    lokr = fingerprint_tensors({f"{MODULE}.lokr_w1": w1, f"{MODULE}.lokr_w2_a": w2a, f"{MODULE}.lokr_w2_b": w2b,
                                f"{MODULE}.alpha": np.array(3.0)}, KEY)
    np.testing.assert_allclose(lokr.sketches[TARGET], dense_sketch(np.kron(w1, w2a @ w2b)), rtol=1e-5, atol=1e-5)


def test_adapter_keys_are_recognised() -> None:
    assert split_adapter_key("base_model.model.x.to_q.lora_A.default.weight") == ("base_model.model.x.to_q", "lora_A")
    assert split_adapter_key("lora_unet_x.dora_scale") == ("lora_unet_x", "dora_scale")
    assert split_adapter_key("unet.x.to_q.lora.down.weight") == ("unet.x.to_q", "lora_down")
    assert split_adapter_key("model.diffusion_model.x.weight") is None


PARTS = ["lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a",
         "hada_w2_b", "lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lora_A.weight", "lora_B.weight", "dora_scale"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(PARTS), st.lists(st.integers(0, 5), max_size=4), min_size=1, max_size=6),
       st.sampled_from(["float16", "float32"]))
def test_hostile_adapter_shapes_give_a_fingerprint_or_a_clean_error(parts: dict[str, list[int]], dtype: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {f"{MODULE}.{part}": rng.standard_normal(shape).astype(dtype) for part, shape in parts.items()}
    try:
        fp = fingerprint_tensors(arrays, KEY)
    except FingerprintError:
        return
    assert all(np.isfinite(s).all() for s in fp.sketches.values())


def test_nan_in_factors_is_refused() -> None:
    up = np.ones((8, 2))
    up[0, 0] = np.nan
    with pytest.raises(FingerprintError, match="NaN"):
        fingerprint_tensors({f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_down.weight": np.ones((2, 8))}, KEY)


# --- PEFT adapter_config.json and DoRA -------------------------------------------------------------

FAMILY = syn.Family(11, syn.Architecture(scale=40, text_layers=1, vocab=50))
LORA = FAMILY.lora(1, rank=8, alpha=16.0)  # scale alpha / r = 2


def kohya_fingerprint():
    return fingerprint_tensors(syn.kohya_layout(LORA), KEY)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_scale_comes_from_the_adapter_config_beside_the_weights(tmp_path, rslora: bool) -> None:
    path = syn.write_peft_adapter(tmp_path, LORA, rslora=rslora)
    with open_model(path) as reader:
        peft = fingerprint_model(reader, KEY)
    with open_model(tmp_path) as reader:  # the folder form finds the config too
        assert fingerprint_model(reader, KEY).to_bytes() == peft.to_bytes()
    result = compare(peft, kohya_fingerprint())
    assert result.similarity > 0.999 and result.coefficient == pytest.approx(1.0, abs=1e-3)
    assert peft.source["peft_scale"] == "adapter_config.json"


def test_without_an_adapter_config_the_scale_is_one_and_the_fingerprint_says_so(tmp_path) -> None:
    path = syn.write_peft_adapter(tmp_path, LORA)
    (tmp_path / "adapter_config.json").unlink()
    with open_model(path) as reader:
        peft = fingerprint_model(reader, KEY)
    result = compare(peft, kohya_fingerprint())
    assert result.similarity > 0.999 and result.coefficient == pytest.approx(0.5, abs=1e-3)  # 1 / (alpha / r)
    assert peft.source["peft_scale"].startswith("assumed 1")


def test_alpha_pattern_overrides_the_scale_of_matching_modules() -> None:
    module = next(iter(LORA.modules))
    scaling = parse_peft_config(json.dumps({"r": 8, "lora_alpha": 8, "alpha_pattern": {module.split(".", 1)[1]: 32}}).encode(), "c")
    assert scaling is not None
    assert scaling.scale(f"base_model.model.{module}", 8) == 4.0 and scaling.scale("base_model.model.unet.other.to_q", 8) == 1.0
    assert parse_peft_config(b'{"peft_type": "LOHA", "alpha": 4}', "c") is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"r": 8}', "without lora_alpha"),
        (b'{"lora_alpha": 1e300}', "lora_alpha must be a number"),
        (b'{"lora_alpha": true}', "lora_alpha must be a number"),
        (b'{"lora_alpha": -4}', "lora_alpha must be a number"),
        (b'{"lora_alpha": 8, "r": "8"}', "r must be an integer"),
        (b'{"lora_alpha": 8, "r": 99999999}', "r must be an integer"),
        (b'{"lora_alpha": 8, "use_rslora": "yes"}', "use_rslora"),
        (b'{"lora_alpha": 8, "alpha_pattern": {"x": NaN}}', "alpha_pattern"),
        (b'{"lora_alpha": 8, "lora_alpha": 9}', "repeats the key"),
    ],
)
def test_hostile_adapter_configs_are_refused_with_a_clear_error(tmp_path, config: bytes, message: str) -> None:
    path = syn.write_peft_adapter(tmp_path, LORA)
    (tmp_path / "adapter_config.json").write_bytes(config)
    with open_model(path) as reader, pytest.raises(ModelFileError, match=message):
        fingerprint_model(reader, KEY)


def test_an_oversized_adapter_config_is_refused_unread(tmp_path) -> None:
    path = syn.write_peft_adapter(tmp_path, LORA)
    (tmp_path / "adapter_config.json").write_bytes(b" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ModelFileError, match="larger than"):
        read_peft_scaling(path)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.dictionaries(
    st.sampled_from(["lora_alpha", "r", "use_rslora", "alpha_pattern", "peft_type"]),
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**9), st.floats(allow_nan=True), st.text(max_size=5),
              st.dictionaries(st.text(max_size=5), st.floats(allow_nan=True), max_size=3)), max_size=5,
).map(lambda d: json.dumps(d).encode())))
def test_any_adapter_config_parses_to_a_sane_scaling_or_a_clean_error(data: bytes) -> None:
    try:
        scaling = parse_peft_config(data, "adapter_config.json")
    except ModelFileError as exc:
        assert "\n" not in str(exc)
        return
    assert scaling is None or (np.isfinite(scaling.scale("m", 4)) and scaling.scale("m", 4) > 0)


def test_dora_sketches_the_directional_delta_and_records_the_approximation(tmp_path) -> None:
    path = syn.write_peft_adapter(tmp_path, LORA, dora=True)
    with open_model(path) as reader:
        dora = fingerprint_model(reader, KEY)
    assert compare(dora, kohya_fingerprint()).similarity > 0.999
    assert dora.source["dora_magnitude_left_out"] == len(LORA.modules)
    assert "dora_magnitude_left_out" not in kohya_fingerprint().source


@pytest.mark.parametrize(
    "bad, expected",
    [(np.ones(3), "DoRA magnitude"), (np.ones((4, 4)), "DoRA magnitude"), (np.full(16, np.nan), "NaN or infinite")],
    ids=["wrong size", "matrix", "nan"],
)
def test_bad_dora_magnitudes_are_refused(bad: np.ndarray, expected: str) -> None:
    rng = np.random.default_rng(1)
    arrays = {f"{MODULE}.lora_up.weight": rng.standard_normal((16, 2)), f"{MODULE}.lora_down.weight": rng.standard_normal((2, 8)),
              f"{MODULE}.dora_scale": bad}
    with pytest.raises(FingerprintError, match=expected):
        fingerprint_tensors(arrays, KEY)


def _two_module_lora(rng: np.random.Generator) -> dict[str, np.ndarray]:
    other = "lora_unet_down_blocks_0_attentions_0_proj_in"
    return {f"{MODULE}.lora_up.weight": rng.standard_normal((16, 4, 1, 1)), f"{MODULE}.lora_down.weight": rng.standard_normal((4, 8, 3, 3)),
            f"{other}.lora_up.weight": rng.standard_normal((8, 2)), f"{other}.lora_down.weight": rng.standard_normal((2, 8))}


@pytest.mark.parametrize(
    "decoy",
    [
        {"lora_unet_mid_block_resnets_0_conv1.lora_up.weight": np.full((4, 2), np.nan),
         "lora_unet_mid_block_resnets_0_conv1.lora_down.weight": np.ones((2, 4))},
        {"lora_unet_mid_block_resnets_0_conv1.lora_up.weight": np.ones((4, 2)),
         "lora_unet_mid_block_resnets_0_conv1.lora_down.weight": np.ones((2, 4)), "lora_unet_mid_block_resnets_0_conv1.alpha": np.array(np.inf)},
        {"lora_unet_mid_block_resnets_0_conv1.hada_w1_a": np.full((4, 2), np.inf), "lora_unet_mid_block_resnets_0_conv1.hada_w1_b": np.ones((2, 4)),
         "lora_unet_mid_block_resnets_0_conv1.hada_w2_a": np.ones((4, 2)), "lora_unet_mid_block_resnets_0_conv1.hada_w2_b": np.ones((2, 4))},
    ],
    ids=["nan-factor", "inf-alpha", "inf-loha"],
)
def test_a_planted_non_finite_module_cannot_hide_a_lora(decoy: dict[str, np.ndarray]) -> None:
    """Refusing the whole adapter for one NaN module let a decoy module hide a listed LoRA (verdict none)."""
    lora = _two_module_lora(np.random.default_rng(2))
    clean, planted = fingerprint_tensors(lora, KEY), fingerprint_tensors(lora | decoy, KEY)
    assert planted.sketches.keys() == clean.sketches.keys()
    assert compare(planted, clean).similarity > 0.999
    assert planted.source["non_finite_left_out"] == 1 and "non_finite_left_out" not in clean.source


_HUGE = 1 << 20  # rank-1 factors of a million rows: a 2-MB file whose product has 2⁴⁰ elements (8 TiB)


@pytest.mark.parametrize(
    "decoy",
    [
        {"lora_unet_mid_block_resnets_0_conv1.lokr_w1_a": np.ones((_HUGE, 1), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.lokr_w1_b": np.ones((1, _HUGE), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.lokr_w2": np.ones((2, 2), np.float16)},
        {"lora_unet_mid_block_resnets_0_conv1.lokr_w1": np.ones((64, 64), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.lokr_w2": np.ones((1024, 1024), np.float16)},  # kron: 2³² elements
        {"lora_unet_mid_block_resnets_0_conv1.hada_w1_a": np.ones((_HUGE, 1), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.hada_w1_b": np.ones((1, _HUGE), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.hada_w2_a": np.ones((_HUGE, 1), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.hada_w2_b": np.ones((1, _HUGE), np.float16)},
        {"lora_unet_mid_block_resnets_0_conv1.lora_up.weight": np.ones((_HUGE, 1, 1, 1), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.lora_mid.weight": np.ones((1, 1, 3, 3), np.float16),
         "lora_unet_mid_block_resnets_0_conv1.lora_down.weight": np.ones((1, _HUGE, 1, 1), np.float16)},
        {"lora_unet_mid_block_resnets_0_conv1.lora_up.weight": np.ones((_HUGE + 1, 1), np.float16),  # a 48-MB projection
         "lora_unet_mid_block_resnets_0_conv1.lora_down.weight": np.ones((1, 4), np.float16)},
    ],
    ids=["lokr-factors", "lokr-kron", "loha", "cp-locon", "long-lora"],
)
def test_a_module_whose_dense_delta_is_huge_is_left_out(decoy: dict[str, np.ndarray]) -> None:
    """LoHa/LoKr/CP deltas are formed densely, sized by factor shapes the file chooses: these crashed
    with a numpy MemoryError traceback (or, a little smaller, really allocated tens of GB)."""
    lora = _two_module_lora(np.random.default_rng(5))
    clean, planted = fingerprint_tensors(lora, KEY), fingerprint_tensors(lora | decoy, KEY)
    assert planted.sketches.keys() == clean.sketches.keys()
    assert compare(planted, clean).similarity > 0.999
    assert planted.source["oversized_left_out"] == 1
    with pytest.raises(FingerprintError, match="too large to sketch"):
        fingerprint_tensors(decoy, KEY)


@pytest.mark.parametrize("stray", [np.ones(()), np.ones((0, 2))], ids=["scalar", "empty"])
def test_a_stray_lokr_factor_beside_a_whole_one_is_ignored(stray: np.ndarray) -> None:
    """The scale took its rank from lokr_w1_b even when the whole lokr_w1 was used: IndexError or
    ZeroDivisionError tracebacks (found by the hostile-shapes property test)."""
    parts = {f"{MODULE}.lokr_w1": np.ones((2, 2)), f"{MODULE}.lokr_w2": np.ones((8, 36))}
    plain = fingerprint_tensors(parts, KEY)
    np.testing.assert_array_equal(fingerprint_tensors(parts | {f"{MODULE}.lokr_w1_b": stray}, KEY).sketches[TARGET],
                                  plain.sketches[TARGET])


def test_modules_loaders_would_skip_cannot_hide_a_lora() -> None:
    """An incomplete or ill-shaped decoy module made the whole adapter a FingerprintError (verdict none);
    loaders skip what they cannot apply, and so do fingerprints now, counting it."""
    lora = _two_module_lora(np.random.default_rng(11))
    decoys = {"lora_unet_mid_block_resnets_0_conv1.lora_down.weight": np.ones((2, 4)),  # no lora_up
              "lora_unet_mid_block_resnets_0_conv2.lora_up.weight": np.ones((4, 3)),  # factors that do not multiply
              "lora_unet_mid_block_resnets_0_conv2.lora_down.weight": np.ones((2, 4)),
              "lora_unet_mid_block_resnets_1_conv1.alpha": np.ones(3)}  # alpha that is no number
    decoys |= {"lora_unet_mid_block_resnets_1_conv1.lora_up.weight": np.ones((4, 2)),
               "lora_unet_mid_block_resnets_1_conv1.lora_down.weight": np.ones((2, 4))}
    clean, planted = fingerprint_tensors(lora, KEY), fingerprint_tensors(lora | decoys, KEY)
    assert planted.sketches.keys() == clean.sketches.keys()
    assert compare(planted, clean).similarity > 0.999
    assert planted.source["malformed_left_out"] == 3


def test_junk_tensors_cannot_turn_a_lora_into_a_checkpoint() -> None:
    """Loaders ignore keys they do not know; 200 one-element junk tensors outnumbered the adapter
    parts, so the file was fingerprinted as a checkpoint that no listed LoRA could match."""
    from modelsieve.fingerprint.fuzzy import select_tensors
    from modelsieve.fingerprint.readers import TensorInfo

    lora = _two_module_lora(np.random.default_rng(9))
    padded = lora | {f"junk.{i}": np.zeros(1, np.float16) for i in range(200)}
    clean, fingerprint = fingerprint_tensors(lora, KEY), fingerprint_tensors(padded, KEY)
    assert fingerprint.kind == "lora" and fingerprint.sketches.keys() == clean.sketches.keys()
    assert compare(fingerprint, clean).similarity > 0.999
    infos = [TensorInfo(name, "F16" if name.startswith("junk") else "F64", array.shape) for name, array in padded.items()]
    assert len(select_tensors(infos)) == len(infos)  # a partial read of an adapter fetches all of it


def test_two_layouts_naming_one_weight_sum_their_deltas() -> None:
    """A kohya and a PEFT module on the same weight are both applied by loaders: ΔW is their sum."""
    rng = np.random.default_rng(3)
    up, down = rng.standard_normal((16, 4, 1, 1)), rng.standard_normal((4, 8, 3, 3))
    b, a = rng.standard_normal((16, 2)), rng.standard_normal((2, 72))
    peft = "base_model.model.down_blocks.0.resnets.0.conv1"
    both = fingerprint_tensors({f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_down.weight": down,
                                f"{peft}.lora_B.weight": b, f"{peft}.lora_A.weight": a}, KEY)
    expected = up.reshape(16, 4) @ down.reshape(4, -1) + b @ a
    np.testing.assert_allclose(both.sketches[TARGET], dense_sketch(expected), rtol=1e-5, atol=1e-5)
    assert both.source["modules_summed"] == 1
    with pytest.raises(FingerprintError, match="with shapes"):
        fingerprint_tensors({f"{MODULE}.lora_up.weight": up, f"{MODULE}.lora_down.weight": down,
                             f"{peft}.lora_B.weight": b, f"{peft}.lora_A.weight": a[:, :8]}, KEY)
