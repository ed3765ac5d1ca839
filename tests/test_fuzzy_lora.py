"""Adapter parsing: every layout's ΔW sketch equals the sketch of the materialised ΔW; hostile shapes fail cleanly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fuzzy import FingerprintKey, fingerprint_tensors
from modelsieve.fingerprint.lora import split_adapter_key
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


def test_dora_magnitudes_are_ignored_and_keys_are_recognised() -> None:
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
