"""Keys and the linear sketch: keyed, linear, chunking-invariant, factor sketches exact."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.keys import KEY_ENV, PUBLIC_KEY, FingerprintKey, load_key, parse_key, projection
from modelsieve.fingerprint import sketch as sketch_module
from modelsieve.fingerprint.sketch import sketch_product, sketch_tensors, view_shape

KEY = FingerprintKey("test", b"0123456789abcdef-test")


def direct(key: FingerprintKey, array: np.ndarray) -> np.ndarray:
    view = view_shape(array.shape)
    matrix = np.asarray(array, dtype=np.float64).reshape(view)
    rows = projection(key, view, "rows").astype(np.float64)
    if len(view) == 1:
        return rows.T @ matrix
    return rows.T @ matrix @ projection(key, view, "cols").astype(np.float64)


def test_key_round_trips_through_text_file_and_environment(tmp_path, monkeypatch) -> None:
    key = FingerprintKey.generate("consortium-1")
    assert parse_key(key.to_text()) == key
    path = tmp_path / "key.txt"
    path.write_text(key.to_text() + "\n")
    assert load_key(path) == key
    monkeypatch.setenv(KEY_ENV, str(path))
    assert load_key() == key
    monkeypatch.setenv(KEY_ENV, key.to_text())
    assert load_key() == key
    monkeypatch.delenv(KEY_ENV)
    assert load_key() == PUBLIC_KEY
    assert key.check != PUBLIC_KEY.check and key.secret.hex() not in repr(key)


@pytest.mark.parametrize("text", ["no-colon", "id:nothex", "id:00", "bad id!:" + "00" * 16, ":" + "00" * 16])
def test_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(FingerprintError):
        parse_key(text)


def test_projections_depend_on_the_key() -> None:
    assert not np.allclose(projection(KEY, (64, 32), "rows"), projection(PUBLIC_KEY, (64, 32), "rows"))
    assert np.array_equal(projection(KEY, (64, 32), "rows"), projection(KEY, (64, 32), "rows"))


def test_chunked_threaded_sketch_equals_the_direct_product(monkeypatch) -> None:
    monkeypatch.setattr(sketch_module, "CHUNK_ELEMENTS", 1000)  # many chunks per tensor
    rng = np.random.default_rng(1)
    arrays = {"conv": rng.standard_normal((40, 8, 3, 3)).astype(np.float16), "bias": rng.standard_normal(40),
              "bf16": rng.standard_normal((50, 30)).astype(ml_dtypes.bfloat16), "scalar": np.float32(3.0).reshape(())}
    sketches = sketch_tensors(KEY, arrays.items(), threads=2)
    assert set(sketches) == {"conv", "bias", "bf16"}
    for name, result in sketches.items():
        np.testing.assert_allclose(result, direct(KEY, arrays[name]), rtol=1e-5, atol=1e-5)
    assert sketches["conv"].shape == (12, 12) and sketches["bias"].shape == (12,)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(-3, 3), st.floats(-3, 3), st.integers(0, 2**32 - 1))
def test_sketch_is_linear(rows: int, cols: int, a: float, b: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((rows, cols)), rng.standard_normal((rows, cols))
    s = sketch_tensors(KEY, [("x", x), ("y", y), ("z", a * x + b * y)], threads=1)
    np.testing.assert_allclose(s["z"], a * s["x"] + b * s["y"], rtol=1e-4, atol=1e-4 * (1 + abs(a) + abs(b)))


def test_factor_sketch_equals_the_sketch_of_the_product_for_any_factorisation() -> None:
    rng = np.random.default_rng(2)
    up, down = rng.standard_normal((48, 6)), rng.standard_normal((6, 72))
    g = rng.standard_normal((6, 6)) + 6 * np.eye(6)
    expected = direct(KEY, 0.5 * up @ down)
    np.testing.assert_allclose(sketch_product(KEY, up, down, 0.5), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sketch_product(KEY, up @ g, np.linalg.solve(g, down), 0.5), expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad: float) -> None:
    array = np.ones((8, 8), dtype=np.float16)
    array[3, 4] = bad
    with pytest.raises(FingerprintError, match="'w'.*NaN or infinite"):
        sketch_tensors(KEY, [("w", array)])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_planted_non_finite_tensor_cannot_hide_a_checkpoint(tmp_path, bad: float) -> None:
    """Refusing the whole model for one NaN tensor let a junk tensor (loaders ignore unknown keys)
    hide a listed checkpoint: it is left out instead, and the fingerprint's source says so."""
    from safetensors.numpy import save_file

    from modelsieve.fingerprint.fuzzy import fingerprint_model
    from modelsieve.fingerprint.readers import open_model

    rng = np.random.default_rng(4)
    weights = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": rng.standard_normal((16, 16)).astype(np.float16),
               "model.diffusion_model.out.2.weight": rng.standard_normal((4, 16, 3, 3)).astype(np.float16)}
    save_file(weights, str(tmp_path / "clean.safetensors"))
    save_file(weights | {"junk": np.full(8, bad, np.float16)}, str(tmp_path / "planted.safetensors"))
    with open_model(tmp_path / "clean.safetensors") as clean, open_model(tmp_path / "planted.safetensors") as planted:
        clean_fp, planted_fp = fingerprint_model(clean, KEY), fingerprint_model(planted, KEY)
    assert planted_fp.sketches.keys() == clean_fp.sketches.keys()
    for name, sketch in clean_fp.sketches.items():
        np.testing.assert_array_equal(planted_fp.sketches[name], sketch)
    assert planted_fp.source["non_finite_left_out"] == 1 and planted_fp.source["non_finite_examples"] == ["other.junk"]


def test_a_decoy_key_naming_the_same_weight_cannot_hide_a_checkpoint() -> None:
    """`unet.conv_in.weight` is the diffusers name of LDM's `input_blocks.0.0.weight`; loaders ignore
    the layout they do not expect, and the clash used to refuse the whole model (verdict none)."""
    from modelsieve.fingerprint.fuzzy import fingerprint_tensors

    rng = np.random.default_rng(10)
    weights = {"model.diffusion_model.input_blocks.0.0.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float16),
               "model.diffusion_model.out.2.weight": rng.standard_normal((4, 8, 3, 3)).astype(np.float16)}
    clean = fingerprint_tensors(weights, KEY)
    for decoy in ({"unet.conv_in.weight": np.ones(1, np.float16)}, {"unet/conv_in.weight": np.ones((2, 2), np.float32)}):
        for planted in (fingerprint_tensors(weights | decoy, KEY), fingerprint_tensors(decoy | weights, KEY)):
            assert planted.sketches.keys() == clean.sketches.keys() and planted.source["names_claimed_twice"] == 1
            for name, sketch in clean.sketches.items():
                np.testing.assert_array_equal(planted.sketches[name], sketch)


def test_the_projection_cache_is_bounded_by_bytes() -> None:
    """Hostile files with many long, distinct shapes must not fill the cache with gigabytes."""
    from modelsieve.fingerprint import keys

    for length in range(1 << 16, (1 << 16) + 100):  # 100 projections of 3 MB: 300 MB drawn
        projection(KEY, (length, 3), "rows")
    assert keys._projection_cache.currsize <= keys.PROJECTION_CACHE_BYTES
    assert np.array_equal(projection(KEY, (1 << 16, 3), "rows"), projection(KEY, (1 << 16, 3), "rows"))


def test_a_side_longer_than_the_bound_is_left_out_not_projected() -> None:
    """A view side of n rows needs an n × 12 float32 projection (48 bytes a row): one long float8
    column would cost 48× its file size. Such tensors are left out, or refused without a record."""
    from modelsieve.fingerprint.fuzzy import fingerprint_tensors
    from modelsieve.fingerprint.sketch import MAX_VIEW_SIDE, LeftOut

    rng = np.random.default_rng(6)
    weights = {"model.diffusion_model.out.2.weight": rng.standard_normal((4, 16, 3, 3)).astype(np.float16)}
    long = np.zeros((MAX_VIEW_SIDE + 1, 1), dtype=ml_dtypes.float8_e4m3fn)
    clean, planted = fingerprint_tensors(weights, KEY), fingerprint_tensors(weights | {"junk": long}, KEY)
    assert planted.sketches.keys() == clean.sketches.keys()
    assert planted.source["oversized_left_out"] == 1 and planted.source["oversized_examples"] == ["other.junk"]
    left_out = LeftOut()
    assert sketch_tensors(KEY, [("w", long)], left_out=left_out) == {} and left_out.all() == {"w"}
    with pytest.raises(FingerprintError, match="'w' is too large to sketch"):
        sketch_tensors(KEY, [("w", long)])


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["model.diffusion_model.out.2.weight", "first_stage_model.quant_conv.weight",
                                        "text_model.final_layer_norm.bias", "weird", "model_ema.x", "alphas_cumprod",
                                        "unet/conv_in.weight", "unet.conv_in.weight"]),
                       st.tuples(st.lists(st.integers(0, 4), max_size=4), st.sampled_from(["float16", "float32", "int64", "bfloat16"])),
                       max_size=6))
def test_any_checkpoint_gives_a_fingerprint_or_a_clean_error(tensors: dict) -> None:
    from modelsieve.fingerprint.fuzzy import fingerprint_tensors

    arrays = {name: np.ones(shape, dtype=ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype) for name, (shape, dtype) in tensors.items()}
    try:
        fp = fingerprint_tensors(arrays, KEY)
    except FingerprintError:
        return
    assert fp.sketches and all(np.isfinite(s).all() for s in fp.sketches.values())
