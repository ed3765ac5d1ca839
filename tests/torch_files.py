"""Write PyTorch checkpoints (zip and legacy formats) with the standard library only, no torch.

`dumps` assembles protocol-2 pickles opcode by opcode, so tests can write exactly what torch writes
and exactly what an attacker would (any global, any call). tests/test_readers_pytorch.py checks
the output against real torch when it is installed, and against committed torch-written fixtures.
"""

from __future__ import annotations

import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {
    np.dtype(np.float32): "Float",
    np.dtype(np.float16): "Half",
    np.dtype(ml_dtypes.bfloat16): "BFloat16",
    np.dtype(np.float64): "Double",
    np.dtype(np.int64): "Long",
    np.dtype(np.int32): "Int",
    np.dtype(np.int16): "Short",
    np.dtype(np.int8): "Char",
    np.dtype(np.uint8): "Byte",
    np.dtype(np.bool_): "Bool",
}


@dataclass(frozen=True)
class Global:
    """A GLOBAL opcode: `module.name`."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """`func(*args)` through REDUCE."""

    func: object
    args: tuple[object, ...]


@dataclass(frozen=True)
class Build:
    """`obj` then `state` then BUILD (`__setstate__` or `__dict__.update`)."""

    obj: object
    state: object


@dataclass(frozen=True)
class PersistentId:
    """BINPERSID of the given id."""

    pid: object


@dataclass(frozen=True)
class Raw:
    """Opcodes inserted verbatim."""

    data: bytes


def _emit(obj: object, out: io.BytesIO) -> None:
    if obj is None:
        out.write(b"N")
    elif obj is True or obj is False:
        out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out.write(b"K" + bytes([obj]))
        elif -(2**31) <= obj < 2**31:
            out.write(b"J" + struct.pack("<i", obj))
        else:
            encoded = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out.write(b"\x8a" + bytes([len(encoded)]) + encoded)
    elif isinstance(obj, float):
        out.write(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        encoded = obj.encode("utf-8", "surrogatepass")
        out.write(b"X" + struct.pack("<I", len(encoded)) + encoded)
    elif isinstance(obj, bytes):
        _emit(Call(Global("_codecs", "encode"), (obj.decode("latin-1"), "latin1")), out)
    elif isinstance(obj, tuple):
        out.write(b"(")
        for item in obj:
            _emit(item, out)
        out.write(b"t")
    elif isinstance(obj, list):
        out.write(b"](")
        for item in obj:
            _emit(item, out)
        out.write(b"e")
    elif isinstance(obj, dict):
        out.write(b"}(")
        for key, value in obj.items():
            _emit(key, out)
            _emit(value, out)
        out.write(b"u")
    elif isinstance(obj, Global):
        out.write(f"c{obj.module}\n{obj.name}\n".encode())
    elif isinstance(obj, Call):
        _emit(obj.func, out)
        _emit(obj.args, out)
        out.write(b"R")
    elif isinstance(obj, Build):
        _emit(obj.obj, out)
        _emit(obj.state, out)
        out.write(b"b")
    elif isinstance(obj, PersistentId):
        _emit(obj.pid, out)
        out.write(b"Q")
    elif isinstance(obj, Raw):
        out.write(obj.data)
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


def dumps(obj: object) -> bytes:
    """A protocol-2 pickle of `obj` (plain containers plus the markers above)."""
    out = io.BytesIO()
    out.write(b"\x80\x02")
    _emit(obj, out)
    out.write(b".")
    return out.getvalue()


def ordered_dict(items: dict[str, object]) -> object:
    """`collections.OrderedDict()` with `items`, as torch pickles state dicts."""
    return Call(Global("collections", "OrderedDict"), ([tuple(pair) for pair in items.items()],))


def tensor_ref(
    key: str,
    storage_dtype: np.dtype,
    storage_numel: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...] | None = None,
    offset: int = 0,
    legacy: bool = False,
) -> Call:
    """`torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())`."""
    if stride is None:
        stride = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
    storage_type = Global("torch", f"{STORAGE_NAMES[np.dtype(storage_dtype)]}Storage")
    pid = ("storage", storage_type, key, "cpu", storage_numel) + ((None,) if legacy else ())
    hooks = Call(Global("collections", "OrderedDict"), ())
    return Call(
        Global("torch._utils", "_rebuild_tensor_v2"), (PersistentId(pid), offset, tuple(shape), tuple(stride), False, hooks)
    )


def state_dict(arrays: dict[str, np.ndarray], legacy: bool = False) -> tuple[object, dict[str, np.ndarray]]:
    """A pickled state dict of contiguous tensors, one storage each: (pickle object, storages by key)."""
    storages = {str(i): np.ascontiguousarray(a) for i, a in enumerate(arrays.values())}
    refs = {
        name: tensor_ref(key, a.dtype, a.size, a.shape, legacy=legacy) for (name, a), key in zip(arrays.items(), storages)
    }
    return ordered_dict(refs), storages


def write_zip(path: Path, obj: object, storages: dict[str, np.ndarray], root: str = "archive") -> Path:
    """A torch ≥ 1.6 zip checkpoint: data.pkl, byteorder, one stored member per storage, version."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", dumps(obj))
        archive.writestr(f"{root}/byteorder", b"little")
        for key, array in storages.items():
            archive.writestr(f"{root}/data/{key}", np.ascontiguousarray(array).tobytes())
        archive.writestr(f"{root}/version", b"3\n")
    return path


def write_legacy(path: Path, obj: object, storages: dict[str, np.ndarray]) -> Path:
    """A legacy (torch < 1.6 style) checkpoint: five pickles, then each storage's count and bytes."""
    system = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    parts = [dumps(LEGACY_MAGIC), dumps(1001), dumps(system), dumps(obj), dumps(list(storages))]
    for array in storages.values():
        parts.append(struct.pack("<q", array.size) + np.ascontiguousarray(array).tobytes())
    path.write_bytes(b"".join(parts))
    return path


def random_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A small mixed-dtype state dict of random (benign) weights."""
    rng = np.random.default_rng(seed)
    return {
        "model.conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "model.conv.bias": rng.standard_normal(4).astype(np.float16),
        "model.norm.weight": rng.standard_normal(8).astype(ml_dtypes.bfloat16),
        "model.steps": np.arange(5, dtype=np.int64),
        "model.mask": rng.standard_normal(6) > 0,
    }
