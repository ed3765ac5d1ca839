"""Fingerprint serialisation: compact, versioned, exact enough, and strict with hostile bytes."""

from __future__ import annotations

import functools
import json
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.fuzzy import BaseModel, Fingerprint, FingerprintKey, compare, fingerprint_tensors

KEY = FingerprintKey("test", b"modelsieve test key 0001")
# the real SD 1.5 tensor count (12 text-encoder layers) with tiny widths: size depends on the count, not the widths
FULL_LAYOUT = syn.Family(3, syn.Architecture(scale=40, text_layers=12, vocab=100))


@functools.cache
def fingerprints() -> tuple[Fingerprint, Fingerprint]:
    base = fingerprint_tensors(FULL_LAYOUT.checkpoint(FULL_LAYOUT.base), KEY)
    tuned = fingerprint_tensors(syn.resave(FULL_LAYOUT.fine_tune(1, 0.01), "fp16"), KEY, [BaseModel("sd15", base)])
    return base, tuned


def test_delta_fingerprint_of_an_sd15_layout_fits_in_256_kb_and_round_trips() -> None:
    base, tuned = fingerprints()
    assert len(tuned.sketches) > 1100 and tuned.base == "sd15"
    data = tuned.to_bytes()
    assert len(data) <= 256 * 1024
    again = Fingerprint.from_bytes(data)
    assert again.to_bytes() == data
    assert compare(again, tuned).similarity > 0.9999
    assert (again.kind, again.base, again.key_id, again.key_check, again.scheme) == ("checkpoint", "sd15", "test", KEY.check, 1)


def test_raw_base_fingerprints_keep_float32_precision() -> None:
    base, _ = fingerprints()
    again = Fingerprint.from_bytes(base.to_bytes())
    for name, sketch in base.sketches.items():
        np.testing.assert_allclose(again.sketches[name], sketch, rtol=1e-6, atol=1e-6 * np.abs(sketch).max())


def test_json_form_carries_the_summary_and_the_bytes() -> None:
    _, tuned = fingerprints()
    record = json.loads(json.dumps(tuned.to_json()))
    assert record["kind"] == "checkpoint" and record["tensors"] == len(tuned.sketches)
    assert Fingerprint.from_json(record).to_bytes() == tuned.to_bytes()
    with pytest.raises(FingerprintError):
        Fingerprint.from_json({"data": "!!"})


def test_other_scheme_versions_are_refused_when_compared() -> None:
    _, tuned = fingerprints()
    future = Fingerprint(tuned.kind, tuned.base, tuned.key_id, tuned.key_check, tuned.sketches, tuned.shapes,
                         tuned.noise, scheme=2)
    with pytest.raises(FingerprintMismatchError, match="scheme"):
        compare(future, tuned)


@pytest.mark.parametrize("scale, value", [(np.inf, 0.0), (0.0, np.inf), (np.nan, 1.0)])
@pytest.mark.filterwarnings("error")  # the one-line error alone: no numpy RuntimeWarning printed before it
def test_a_non_finite_scale_or_value_of_a_delta_fingerprint_is_refused_quietly(scale: float, value: float) -> None:
    _, tuned = fingerprints()
    blob = bytearray(tuned.to_bytes())
    (header_length,) = np.frombuffer(blob[5:9], "<u4")
    count = len(tuned.sketches)
    scales = 9 + int(header_length) + 4 * count  # after the header: noise (f32 each), scales (f32 each), values (f16)
    blob[scales : scales + 4] = np.float32(scale).tobytes()
    blob[scales + 4 * count : scales + 4 * count + 2] = np.float16(value).tobytes()
    with pytest.raises(FingerprintError, match="NaN or infinite"):
        Fingerprint.from_bytes(bytes(blob))


def test_a_signalling_nan_is_refused_without_a_floating_point_warning() -> None:
    """Casting a float32 signalling NaN raised numpy's "invalid value" warning (an error under
    -W error) before the finiteness check could refuse the fingerprint; found by the property test below."""
    _, tuned = fingerprints()
    blob = bytearray(tuned.restricted(sorted(tuned.sketches)[:20]).to_bytes())
    header_length = struct.unpack("<I", blob[5:9])[0]
    blob[9 + header_length : 13 + header_length] = struct.pack("<I", 0x7F800001)  # the first noise value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FingerprintError, match="NaN or infinite"):
            Fingerprint.from_bytes(bytes(blob))


@settings(max_examples=150, deadline=None)
@given(st.data())
@pytest.mark.filterwarnings("error")
def test_corrupted_fingerprints_raise_fingerprint_error_only(data: st.DataObject) -> None:
    _, tuned = fingerprints()
    blob = bytearray(tuned.restricted(sorted(tuned.sketches)[:20]).to_bytes())
    action = data.draw(st.sampled_from(["truncate", "flip", "append", "random"]))
    if action == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif action == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif action == "append":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    else:
        blob = bytearray(b"MSFP" + data.draw(st.binary(max_size=200)))
    try:
        parsed = Fingerprint.from_bytes(bytes(blob))
    except FingerprintError:
        return
    assert all(np.isfinite(s).all() for s in parsed.sketches.values())
