"""Mutated model files: every outcome is a clean result or a clean ModelFileError, never a hang."""

from __future__ import annotations

import functools
import signal
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from modelsieve.fingerprint.errors import ModelFileError
from modelsieve.fingerprint.readers import open_model
from tests.torch_files import random_arrays, state_dict, tensor_ref, ordered_dict, write_legacy, write_zip

DATA = Path(__file__).parent / "data"
SECONDS_PER_EXAMPLE = 10


@functools.cache
def _valid_files() -> dict[str, bytes]:
    """Valid files of every format, as bytes (written once per test process)."""
    with tempfile.TemporaryDirectory() as temporary:
        return _write_valid_files(Path(temporary))


def _write_valid_files(folder: Path) -> dict[str, bytes]:
    arrays = random_arrays(seed=3)
    safe = {k: v for k, v in arrays.items() if v.dtype.kind != "V" and v.dtype.name != "bfloat16"}
    save_file(safe, folder / "m.safetensors", metadata={"title": "x"})
    write_zip(folder / "zip.pt", *state_dict(arrays))
    write_legacy(folder / "legacy.pt", *state_dict(arrays, legacy=True))
    base = np.arange(24, dtype=np.float32)
    strided = ordered_dict({"t": tensor_ref("0", base.dtype, 24, (6, 4), stride=(1, 6)), "w": tensor_ref("0", base.dtype, 24, (2, 3), (3, 1), 5)})
    write_zip(folder / "strided.pt", strided, {"0": base})
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files |= {p.name: p.read_bytes() for p in DATA.glob("*.ckpt")}
    return files


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"reading a mutated file took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


Mutation = tuple[str, float, int]
mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "delete", "u64", "u32"]),
        st.floats(0, 1, exclude_max=True),
        st.integers(0, 2**64 - 1),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(data: bytes, steps: list[Mutation]) -> bytes:
    for kind, where, value in steps:
        position = int(where * len(data)) if data else 0
        if kind == "flip" and data:
            data = data[:position] + bytes([data[position] ^ (value % 255 + 1)]) + data[position + 1 :]
        elif kind == "truncate":
            data = data[:position]
        elif kind == "insert":
            data = data[:position] + value.to_bytes(8, "little")[: value % 8 + 1] + data[position:]
        elif kind == "delete":
            data = data[:position] + data[position + value % 64 + 1 :]
        elif kind == "u64":  # lengths, sizes and offsets are 8- or 4-byte little-endian fields
            data = data[:position] + struct.pack("<Q", value) + data[position + 8 :]
        elif kind == "u32":
            data = data[:position] + struct.pack("<I", value % 2**32) + data[position + 4 :]
    return data


def _read_everything(path: Path) -> None:
    with open_model(path) as reader:
        reader.problems()
        for info in reader.tensors():
            try:
                view = reader.array(info.name)
            except ModelFileError:
                continue  # e.g. packed dtypes without a view
            assert view.shape == info.shape
            view.tobytes()  # touch every byte the view claims


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["m.safetensors", "zip.pt", "legacy.pt", "strided.pt", "torch_zip_small.ckpt", "torch_legacy_small.ckpt"]), steps=mutations)
def test_mutated_files_give_a_clean_result_or_a_clean_error(tmp_path: Path, name: str, steps: list[Mutation]) -> None:
    path = tmp_path / name
    path.write_bytes(_mutate(_valid_files()[name], steps))
    with _time_limit(SECONDS_PER_EXAMPLE):
        try:
            _read_everything(path)
        except ModelFileError as exc:
            assert "\n" not in str(exc)
