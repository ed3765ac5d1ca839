"""The strict safetensors reader: valid files, every malformed header, and agreement with safe_open."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from modelsieve.fingerprint.errors import ModelFileError
from modelsieve.fingerprint.readers import open_model
from modelsieve.fingerprint.readers.safetensors import MAX_HEADER_BYTES, parse_header, read_header_length


def write_raw(path: Path, header: str | bytes, data: bytes = b"") -> Path:
    """A safetensors file from a literal header (text or bytes) and data buffer."""
    encoded = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def entry(dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None) -> dict[str, object]:
    return {"dtype": dtype, "shape": [1] if shape is None else shape, "data_offsets": [0, 4] if offsets is None else offsets}


def test_reads_files_written_by_the_safetensors_library(tmp_path: Path) -> None:
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(3, dtype=np.int64), "m": np.array([True, False])}
    save_file(arrays, tmp_path / "m.safetensors", metadata={"ss_base_model_version": "sd_v1"})
    with open_model(tmp_path / "m.safetensors") as reader:
        assert reader.format == "safetensors" and dict(reader.metadata) == {"ss_base_model_version": "sd_v1"}
        assert {t.name: (t.dtype, t.shape) for t in reader.tensors()} == {"w": ("F32", (3, 4)), "i": ("I64", (3,)), "m": ("BOOL", (2,))}
        for name, array in arrays.items():
            view = reader.array(name)
            np.testing.assert_array_equal(view, array)
            assert not view.flags.writeable


@pytest.mark.parametrize(
    "dtype, numpy_type",
    [("BF16", ml_dtypes.bfloat16), ("F8_E4M3", ml_dtypes.float8_e4m3fn), ("F8_E5M2", ml_dtypes.float8_e5m2), ("F16", np.float16)],
)
def test_bfloat16_and_float8_views_in_their_own_dtype(tmp_path: Path, dtype: str, numpy_type: type) -> None:
    values = np.array([0.5, -2.0, 1.5, 0.0], dtype=numpy_type)
    path = write_raw(tmp_path / "x.safetensors", json.dumps({"x": entry(dtype, [4], [0, values.nbytes])}), values.tobytes())
    with open_model(path) as reader:
        view = reader.array("x")
        assert view.dtype == np.dtype(numpy_type) and view.tobytes() == values.tobytes()


def test_packed_sub_byte_dtypes_are_listed_but_not_viewable(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "f4.safetensors", json.dumps({"x": entry("F4", [8], [0, 4])}), bytes(4))
    with open_model(path) as reader:
        assert reader.tensors()[0].dtype == "F4"
        with pytest.raises(ModelFileError, match="packed below one byte"):
            reader.array("x")


VALID = {"a": entry("F32", [2], [0, 8]), "b": entry("F16", [2], [8, 12])}


@pytest.mark.parametrize(
    "header, data, expected",
    [
        (json.dumps(VALID), bytes(11), "truncated safetensors file: tensors need"),
        (json.dumps(VALID), bytes(13), "1 trailing bytes"),
        ('{"a": {"dtype": "F32", "shape": [2], ', bytes(8), "not valid JSON"),
        (b'{"\xff": 1}', b"", "not valid UTF-8"),
        ('{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4), "lone surrogate"),
        ("[]", b"", "not a JSON object"),
        (json.dumps({"a": entry("F33")}), bytes(4), "unknown dtype 'F33'"),
        (json.dumps({"a": entry("F32", [2], [0, 8]), "b": entry("F32", [1], [4, 8])}), bytes(8), "overlaps"),
        (json.dumps({"a": entry("F32", [1], [0, 4]), "b": entry("F32", [1], [8, 12])}), bytes(12), "leaves a gap at byte 4"),
        (json.dumps({"a": entry("F32", [1], [4, 8])}), bytes(8), "leaves a gap at byte 0"),
        (json.dumps({"a": entry("F32", [3], [0, 8])}), bytes(8), "does not match shape [3] × F32 = 12 bytes"),
        (json.dumps({"a": entry("F32", [1], [8, 4])}), bytes(8), "before begin"),
        (json.dumps({"a": entry("F32", [1], [0, 2**64])}), b"", "two non-negative integers"),
        (json.dumps({"a": entry("F32", [-1], [0, 4])}), bytes(4), "non-negative integers"),
        (json.dumps({"a": entry("F32", [2**63, 2**63], [0, 4])}), bytes(4), "overflows"),
        (json.dumps({"a": entry("F32", [2**63, 2**63, 0], [0, 0])}), b"", "overflows"),  # a later 0 does not excuse it
        (json.dumps({"a": entry("F32", [True], [0, 4])}), bytes(4), "non-negative integers"),
        (json.dumps({"a": entry("F32", [1.0], [0, 4])}), bytes(4), "non-negative integers"),
        (json.dumps({"a": entry("F32", [1], [0, True])}), bytes(4), "two non-negative integers"),
        ('{"__metadata__": {"k": "\\udc00"}}', b"", "lone surrogate"),
        (json.dumps({"a": entry("F4", [3], [0, 2])}), bytes(2), "not a whole number of bytes"),
        (json.dumps({"__metadata__": {"k": 1}}), b"", "map of strings to strings"),
        ('{"a": {"dtype": "F16", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4), "repeats the field 'dtype'"),
        ('{"__metadata__": {}, "__metadata__": {}}', b"", "repeats the key '__metadata__'"),
        (json.dumps({"a": {"dtype": "F32", "shape": [1]}}), bytes(4), "needs the fields"),
        (json.dumps({"a": "not an object"}), b"", "not a JSON object"),
        ("[" * 100_000 + "]" * 100_000, b"", "nested too deeply|not a JSON object"),
        ('{"a": {"dtype": "F32", "shape": [1' + "0" * 5000 + '], "data_offsets": [0, 4]}}', bytes(4), "more than 4300 digits"),
    ],
)
def test_malformed_headers_are_refused_with_a_reason(tmp_path: Path, header: str | bytes, data: bytes, expected: str) -> None:
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ModelFileError, match=expected.replace("[", r"\[").replace("]", r"\]").replace("×", "×")) as caught:
        open_model(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"\x10\x00\x00", "truncated safetensors file: 3 bytes"),
        (struct.pack("<Q", 100) + b"{}", "runs past the end"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "exceeds the bound"),
        (struct.pack("<Q", 1) + b"{", "too small"),
    ],
)
def test_truncated_and_lying_length_prefixes(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=expected):
        open_model(path)


def test_header_functions_work_on_bytes_alone() -> None:
    """The crawler validates remote headers from ranged reads, without a local file."""
    header = json.dumps(VALID).encode()
    assert read_header_length(struct.pack("<Q", len(header)) + b"{", file_size=None) == len(header)
    parsed = parse_header(header)
    assert parsed.file_size == 8 + len(header) + 12 and [s.info.name for s in parsed.spans] == ["a", "b"]
    with pytest.raises(ModelFileError, match="runs past the end"):
        read_header_length(struct.pack("<Q", 1000), file_size=100)


# --- Agreement with the official library -------------------------------------------------------

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "C64": 8}


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, int]:
    """Mostly-valid headers with one optional defect, and a data length that may be off."""
    count = draw(st.integers(0, 4))
    names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=count, max_size=count, unique=True))
    document: dict[str, object] = {}
    position = 0
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPE_BYTES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = int(np.prod(shape, dtype=np.int64)) * DTYPE_BYTES[dtype]
        document[name] = entry(dtype, shape, [position, position + size])
        position += size
    if draw(st.booleans()):
        document["__metadata__"] = draw(
            st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2), st.just({"k": 1}))
        )
    defect = draw(st.sampled_from(["none", "dtype", "shape", "begin", "end", "swap", "float", "negative", "missing", "extra", "repeat"]))
    tensors = [v for k, v in document.items() if k != "__metadata__"]
    if defect != "none" and tensors:
        victim = draw(st.sampled_from(tensors))
        assert isinstance(victim, dict)
        if defect == "dtype":
            victim["dtype"] = draw(st.sampled_from(["F31", "f32", "", "BF8"]))
        elif defect == "shape":
            victim["shape"] = victim["shape"] + [draw(st.integers(0, 3))]
        elif defect in ("begin", "end"):
            offsets = victim["data_offsets"]
            offsets[0 if defect == "begin" else 1] += draw(st.sampled_from([-1, 1, 4]))
        elif defect == "swap":
            victim["data_offsets"] = victim["data_offsets"][::-1]
        elif defect == "float":
            victim["shape"] = [float(d) for d in victim["shape"]] or [1.5]
        elif defect == "negative":
            victim["data_offsets"] = [-1, victim["data_offsets"][1]]
        elif defect == "extra":
            victim[draw(st.sampled_from(["note", "x", "dtype "]))] = draw(st.sampled_from([1, None, {"y": [1]}, "z"]))
        elif defect == "missing":
            del victim[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    if defect == "repeat" and document:  # a key named twice: loaders keep the last entry
        name = draw(st.sampled_from(sorted(document)))
        again = draw(st.sampled_from([document[name], entry("F32", [1], [0, 4]), {"k": "v"}]))
        text = f"{text[:-1]}, {json.dumps(name)}: {json.dumps(again)}}}"
    text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", "  ", "\t"]))
    data_length = max(position + draw(st.sampled_from([0, 0, 0, -1, 1])), 0)
    return text.encode("utf-8", "surrogatepass"), data_length


def _official_accepts(path: Path) -> bool:
    try:
        with safe_open(str(path), "np") as handle:
            list(handle.keys())
    except Exception:  # the official library raises SafetensorError / others for malformed files
        return False
    return True


def _we_accept(path: Path) -> bool:
    try:
        open_model(path).close()
    except ModelFileError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers())
def test_we_accept_exactly_what_safe_open_accepts(tmp_path: Path, case: tuple[bytes, int]) -> None:
    """Including repeated tensor names and unknown fields, which loaders read and so do we."""
    header, data_length = case
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(data_length))
    assert _we_accept(path) == _official_accepts(path), header[:300]


@pytest.mark.parametrize(
    "header, expected_problem",
    [
        ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
         "tensors ['a'] more than once; read the last"),
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "note": {"any": [1]}}}', "ignored unknown fields ['note']"),
        ('{"__metadata__": {"k": "v", "k": "w"}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
         "__metadata__ repeats the keys ['k']"),
    ],
)
def test_what_loaders_let_pass_is_read_as_they_read_it_and_noted(tmp_path: Path, header: str, expected_problem: str) -> None:
    """Refusing these let one header edit hide a listed file from AutoV3 and fingerprints while
    every loader still loaded it: modelsieve now reads them as safe_open does and says so."""
    path = write_raw(tmp_path / "x.safetensors", header, np.float32([1.5]).tobytes())
    with safe_open(str(path), "np") as official, open_model(path) as reader:
        assert dict(reader.metadata) == (official.metadata() or {})
        assert [t.name for t in reader.tensors()] == list(official.keys())
        for name in official.keys():
            np.testing.assert_array_equal(reader.array(name), official.get_tensor(name))
        assert any(expected_problem in problem for problem in reader.problems()), reader.problems()


def test_header_oddities_are_summarised(tmp_path: Path) -> None:
    header = json.dumps({f"t{i}": entry("F32", [1], [4 * i, 4 * i + 4]) | {"x": i} for i in range(1000)})
    with open_model(write_raw(tmp_path / "x.safetensors", header, bytes(4000))) as reader:
        assert len(reader.problems()) == 11 and reader.problems()[-1] == "and 990 more header oddities"
