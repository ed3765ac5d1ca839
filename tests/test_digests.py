"""Whole-file digests against coreutils, the blake3 reference and the ecosystem's definitions.

The reference functions below are written straight from the definitions (A1111 / kohya /
Civitai, see /work/shared/reference/model-hashes.md), one-shot over the whole byte string, so
they share nothing with the chunked, threaded code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import threading
import zipfile
import zlib
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from modelsieve.fingerprint.digests import (
    DEFAULT_DIGESTS,
    DIGEST_NAMES,
    MultiDigest,
    UnknownDigestError,
    digest_names,
    hash_file,
)
from modelsieve.fingerprint.errors import ModelFileError

MIB = 1024 * 1024


# --- references, from the definitions -------------------------------------------------------


def ref_autov1(data: bytes) -> str | None:
    if len(data) < 0x200000:
        return None
    return hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]


def ref_autov2(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:10]


def ref_autov3(data: bytes) -> str | None:
    """As civitai/model-scanner's HashTask computes it, for any file."""
    if len(data) < 8:
        return None
    header_length = int.from_bytes(data[:8], "little")
    start = 8 + header_length if header_length < 16 * MIB else 8
    return hashlib.sha256(data[start:]).hexdigest() if start <= len(data) else None


def ref_crc32(data: bytes) -> str:
    return zlib.crc32(data).to_bytes(4, "little").hex().upper()


def reference_digests(data: bytes) -> dict[str, str | None]:
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "blake3": blake3.blake3(data).hexdigest(),
        "crc32": ref_crc32(data),
        "md5": hashlib.md5(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
        "autov1": ref_autov1(data),
        "autov2": ref_autov2(data),
        "autov3": ref_autov3(data),
    }


def coreutils_digest(tool: str, path: Path) -> str:
    return subprocess.run([tool, "-b", str(path)], check=True, capture_output=True, text=True).stdout.split()[0]


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def safetensors_bytes(payload: bytes, metadata: dict[str, str] | None = None, header_pad: int = 0) -> bytes:
    """A valid safetensors file holding `payload` as one U8 tensor (written by hand, so the header
    can be made as long as a test needs)."""
    header: dict[str, object] = {"data": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode() + b" " * header_pad
    return len(text).to_bytes(8, "little") + text + payload


# --- known vectors -----------------------------------------------------------------------------


def test_crc32_is_printed_in_civitais_byte_order() -> None:
    digest = MultiDigest(["crc32"])
    digest.update(b"hello world")
    # Civitai's model scanner test vector; zlib's integer for the same bytes is 0x0D4A1185.
    assert digest.hexdigests() == {"crc32": "85114A0D"}


def test_names_are_validated_deduplicated_and_ordered() -> None:
    assert digest_names(["SHA1", "sha256", "sha256", " md5 "]) == ("sha256", "md5", "sha1")
    assert set(DEFAULT_DIGESTS) == set(DIGEST_NAMES) - {"md5", "sha1"}
    with pytest.raises(UnknownDigestError, match="unknown digest sha512"):
        digest_names(["sha512"])
    with pytest.raises(UnknownDigestError):
        digest_names([])


# --- files on disk against coreutils and the references ---------------------------------------

CHUNK = 64 * 1024  # small chunks so the threaded path and every boundary run on small files

SIZES = [
    0,
    1,
    7,
    8,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    0x100000 - 1,  # ends before the AutoV1 window
    0x100000 + 0x8000,  # ends inside the window
    0x110000,  # ends right after the window
    0x200000 - 1,  # one byte short of Civitai's AutoV1 minimum
    0x200000,
    0x200000 + 1,
    3 * CHUNK * 11 + 5,
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("workers", [1, 3])
def test_hash_file_matches_coreutils_blake3_and_references(tmp_path: Path, size: int, workers: int) -> None:
    data = random_bytes(size, seed=size)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)

    result = hash_file(path, DIGEST_NAMES, workers=workers, chunk_size=CHUNK)

    assert result.size == size
    assert result.format == "other"
    assert result.digests == reference_digests(data)
    assert result.digests["sha256"] == coreutils_digest("sha256sum", path)
    assert result.digests["md5"] == coreutils_digest("md5sum", path)
    assert result.digests["sha1"] == coreutils_digest("sha1sum", path)


@pytest.mark.parametrize("payload_size", [0, 5, 0x200000, 0x300000 + 17])
@pytest.mark.parametrize("workers", [1, 2])
def test_safetensors_autov3_skips_the_header(tmp_path: Path, payload_size: int, workers: int) -> None:
    data = safetensors_bytes(random_bytes(payload_size, seed=payload_size), {"name": "demo"})
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)

    result = hash_file(path, DIGEST_NAMES, workers=workers, chunk_size=CHUNK)

    assert result.format == "safetensors"
    assert result.digests == reference_digests(data)
    assert result.digests["autov3"] == hashlib.sha256(data[len(data) - payload_size :]).hexdigest()


def test_metadata_edit_keeps_autov3_and_changes_sha256(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    tensors = {"a.weight": rng.standard_normal((64, 32)).astype(np.float16), "b.bias": rng.standard_normal(32).astype(np.float32)}
    save_file(tensors, str(tmp_path / "original.safetensors"), metadata={"ss_output_name": "original"})
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata={"ss_output_name": "edited", "extra": "x" * 100})

    original = hash_file(tmp_path / "original.safetensors")
    edited = hash_file(tmp_path / "edited.safetensors")

    assert original.format == edited.format == "safetensors"
    assert original.digests["autov3"] == edited.digests["autov3"]
    assert original.digests["sha256"] != edited.digests["sha256"]
    assert original.digests["autov2"] != edited.digests["autov2"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda header: header.replace(b'"data_offsets"', b'"note": "edited", "data_offsets"'),  # unknown field
        lambda header: header[:-1] + b', "data": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, "data"' + header[header.index(b":", 2):],
    ],
    ids=["unknown-field", "repeated-tensor"],
)
def test_header_edits_every_loader_accepts_keep_autov3(tmp_path: Path, edit) -> None:
    """AutoV3 exists to survive header edits; such a file loads everywhere (the last repeated entry
    wins), so it must keep the listed AutoV3 rather than lose it to a stricter parser."""
    payload = random_bytes(64, seed=5)
    original = safetensors_bytes(payload)
    header = original[8 : len(original) - len(payload)]
    edited_header = edit(header)
    edited = len(edited_header).to_bytes(8, "little") + edited_header + payload
    (tmp_path / "edited.safetensors").write_bytes(edited)

    result = hash_file(tmp_path / "edited.safetensors")

    assert result.format == "safetensors"
    assert result.digests["autov3"] == ref_autov3(original) == hashlib.sha256(payload).hexdigest()


def test_header_of_16_mib_or_more_is_hashed_with_the_data(tmp_path: Path) -> None:
    payload = random_bytes(1000, seed=3)
    data = safetensors_bytes(payload, header_pad=16 * MIB)
    path = tmp_path / "big-header.safetensors"
    path.write_bytes(data)

    result = hash_file(path, ["autov3", "sha256"], chunk_size=4 * MIB)

    assert result.format == "safetensors"
    assert result.digests["autov3"] == hashlib.sha256(data[8:]).hexdigest()
    assert result.digests["autov3"] != hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize(
    ("make", "expected_format", "autov3_from"),
    [
        (lambda: safetensors_bytes(b"0123456789")[:-1], "other", "after header"),  # truncated: header promises more
        (lambda: safetensors_bytes(b"0123456789") + b"!", "other", "after header"),  # trailing bytes
        (lambda: (20).to_bytes(8, "little") + b"{not json at all!!!}", "other", "after header"),
        (lambda: (2**40).to_bytes(8, "little") + b"{}", "other", 8),  # absurd header length: not skipped
        (lambda: (5008).to_bytes(8, "little") + b'{"a": 1' + b"0" * 5000 + b"}", "other", "after header"),  # beyond int() digits
        (lambda: pickle.dumps({"weights": [1.0, 2.0]}, protocol=2), "pickle", 8),
        (lambda: (100).to_bytes(8, "little") + b"{}", "other", None),  # the header runs past the end
        (lambda: b"1234567", "other", None),
        (lambda: b"", "other", None),
    ],
)
def test_autov3_of_any_file_follows_civitais_scanner(tmp_path: Path, make, expected_format: str, autov3_from: object) -> None:
    """Civitai's scanner (civitai/model-scanner, HashTask.cs) takes AutoV3 of every file, not only
    valid safetensors: a list built from its hashes lists .ckpt files by theirs too."""
    data = make()
    path = tmp_path / "file.bin"
    path.write_bytes(data)

    result = hash_file(path, chunk_size=CHUNK)

    assert result.format == expected_format
    assert result.digests["sha256"] == hashlib.sha256(data).hexdigest()
    if autov3_from is None:
        assert result.digests["autov3"] is None
    else:
        start = 8 + int.from_bytes(data[:8], "little") if autov3_from == "after header" else autov3_from
        assert result.digests["autov3"] == hashlib.sha256(data[start:]).hexdigest()


def test_a_zip_checkpoints_autov3_is_the_sha256_from_byte_8(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    data = path.read_bytes()
    assert int.from_bytes(data[:8], "little") >= 16 * MIB  # "PK\x03\x04" and the version: never a short header
    assert hash_file(path).digests["autov3"] == hashlib.sha256(data[8:]).hexdigest()


def test_zip_archives_are_sniffed_as_pytorch_zip(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        archive.writestr("archive/version", "3\n")

    assert hash_file(path).format == "pytorch-zip"


def test_unreadable_paths_raise_a_one_line_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read"):
        hash_file(tmp_path)
    with pytest.raises(ModelFileError, match="cannot read"):
        hash_file(tmp_path / "missing.safetensors")


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(random_bytes(5 * CHUNK + 3))
    seen: list[int] = []

    hash_file(path, workers=2, chunk_size=CHUNK, on_progress=seen.append)

    assert sum(seen) == 5 * CHUNK + 3


# --- streaming: any chunking gives the one-shot answer ---------------------------------------


@st.composite
def chunked_streams(draw: st.DrawFn) -> tuple[bytes, bool, list[int]]:
    size = draw(st.one_of(st.integers(0, 300), st.integers(0x100000 - 64, 0x200000 + 4096)))
    data = random_bytes(size, seed=draw(st.integers(0, 2**32 - 1)))
    safetensors = draw(st.booleans())
    if safetensors:
        metadata = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3))
        data = safetensors_bytes(data, metadata, header_pad=draw(st.integers(0, 9)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return data, safetensors, cuts


@settings(max_examples=60, deadline=None)
@given(stream=chunked_streams(), names=st.lists(st.sampled_from(DIGEST_NAMES), min_size=1, unique=True))
def test_any_chunking_gives_the_one_shot_digests(stream: tuple[bytes, bool, list[int]], names: list[str]) -> None:
    data, safetensors, cuts = stream
    digest = MultiDigest(names)
    for begin, end in zip([0, *cuts], [*cuts, len(data)]):
        digest.update(data[begin:end])

    expected = reference_digests(data)
    assert digest.hexdigests() == {name: expected[name] for name in digest_names(names)}
    assert digest.size == len(data)
    assert (digest.format == "safetensors") == safetensors


def test_hash_file_reads_a_pipe_as_a_stream(tmp_path: Path) -> None:
    data = safetensors_bytes(random_bytes(3 * CHUNK + 1, seed=5))
    fifo = tmp_path / "stream.safetensors"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()

    result = hash_file(fifo, DIGEST_NAMES, chunk_size=CHUNK)

    writer.join()
    assert result.size == len(data) and result.format == "safetensors"
    assert result.digests == reference_digests(data)
