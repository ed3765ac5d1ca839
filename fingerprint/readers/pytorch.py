"""PyTorch checkpoints (.ckpt, .pt, .pth, .bin) read without torch and without running pickle code.

Zip format (torch ≥ 1.6): `<root>/data.pkl` describes the object; each storage is one uncompressed
member `<root>/data/<key>`, memory-mapped here. Legacy format: five pickles in a row (magic number,
protocol version, system info, the object, the storage keys), then each storage as an 8-byte element
count followed by its raw bytes. The pickles go through `restricted_pickle`; storages become lazy
numpy views of the mapped file.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from modelsieve.fingerprint.dtypes import dtype_named
from modelsieve.fingerprint.errors import ModelFileError, quoted
from modelsieve.fingerprint.readers.base import ModelReader, TensorInfo
from modelsieve.fingerprint.readers.restricted_pickle import (
    MAX_PICKLE_BYTES,
    OpaqueObject,
    PickledTensor,
    StorageRef,
    load_pickle,
    parse_storage_pid,
)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_ZIP_MEMBERS = 100_000
MAX_CENTRAL_DIRECTORY_BYTES = 16 * 2**20
MAX_NESTING = 64
MAX_WALKED_VALUES = 4_000_000  # values below the root a checkpoint may hold; real ones hold a few per tensor
MAX_VIEW_AMPLIFICATION = 4  # tensors may view at most this many times the bytes their storages hold
WRAPPER_KEYS = ("state_dict", "model_state_dict", "module", "model")
_LISTED_SKIPS = 10
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, fixed fields, name length, extra length
_Storages = dict[str, tuple[int, int]]  # storage key → (file offset, byte length)


def _zip_members(handle: BinaryIO, size: int, view: mmap.mmap) -> dict[str, tuple[int, int]]:
    """Every member's data range, after bounding the central directory and refusing anything torch never writes."""
    # the stdlib's own locator, read before ZipFile trusts it (private, so typeshed does not declare it)
    end_record = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    if not end_record:
        raise ModelFileError("zip archive has no end-of-central-directory record")
    fields = (zipfile._ECD_ENTRIES_TOTAL, zipfile._ECD_SIZE, zipfile._ECD_OFFSET)  # type: ignore[attr-defined]
    entries, cd_size, cd_offset = (end_record[i] for i in fields)
    if entries > MAX_ZIP_MEMBERS or cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise ModelFileError(f"zip central directory claims {entries} members in {cd_size} bytes, beyond the bounds")
    if cd_offset + cd_size > size:
        raise ModelFileError(f"zip central directory [{cd_offset}, {cd_offset + cd_size}) lies outside the {size}-byte file")
    try:
        infos = zipfile.ZipFile(handle).infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
        raise ModelFileError(f"malformed zip archive: {exc}") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ModelFileError(f"zip archive has {len(infos)} members, more than {MAX_ZIP_MEMBERS}")
    members: dict[str, tuple[int, int]] = {}
    for info in infos:
        name = info.filename
        if name in members:
            raise ModelFileError(f"zip member {quoted(name)} appears twice")
        if info.flag_bits & 1:
            raise ModelFileError(f"zip member {quoted(name)} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise ModelFileError(f"zip member {quoted(name)} is compressed; torch stores members uncompressed")
        start = info.header_offset + _LOCAL_HEADER.size
        if info.header_offset < 0 or start > size:
            raise ModelFileError(f"zip member {quoted(name)}: local header lies outside the file")
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(view[info.header_offset : start])
        if signature != b"PK\x03\x04":
            raise ModelFileError(f"zip member {quoted(name)}: no local header at offset {info.header_offset}")
        start += name_length + extra_length
        if start + info.file_size > size:
            raise ModelFileError(f"zip member {quoted(name)}: {info.file_size} bytes at offset {start} run past the end of the {size}-byte file")
        members[name] = (start, info.file_size)
    ranges = sorted(r for r in members.values() if r[1])
    for (start_a, length_a), (start_b, _) in zip(ranges, ranges[1:]):
        if start_a + length_a > start_b:
            raise ModelFileError(f"zip members overlap at offset {start_b}")
    return members


def _storage_loader(refs: dict[str, StorageRef], size_of: Callable[[str], int] | None) -> Callable[[object], StorageRef]:
    """A persistent_load that validates torch storage ids into `refs`, keeping each key consistent.

    `size_of(key)`, when the container knows it up front (zip), must equal the declared size.
    """

    def persistent_load(pid: object) -> StorageRef:
        storage_type, key, numel = parse_storage_pid(pid)
        ref = StorageRef(key, storage_type.dtype, numel * _itemsize(storage_type.dtype))
        if refs.setdefault(key, ref) != ref:
            raise ModelFileError(f"storage {key!r} is declared twice with different types or sizes")
        if size_of is not None and size_of(key) != ref.nbytes:
            raise ModelFileError(f"storage {key!r} declares {ref.nbytes} bytes, the file holds {size_of(key)}")
        return ref

    return persistent_load


def _itemsize(ref_dtype: str | None) -> int:
    """Bytes per storage element; untyped storages count bytes."""
    return dtype_named(ref_dtype or "U8").bits // 8


def _load_zip(handle: BinaryIO, view: mmap.mmap) -> tuple[object, _Storages]:
    members = _zip_members(handle, len(view), view)
    roots = [name[: -len("/data.pkl")] for name in members if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(roots) != 1:
        raise ModelFileError(f"zip archive is not a torch checkpoint: {len(roots)} '<root>/data.pkl' members, need 1")
    root = roots[0]
    if members.get(f"{root}/byteorder", (0, 0))[1] and _member_bytes(view, members[f"{root}/byteorder"]) != b"little":
        raise ModelFileError("big-endian torch checkpoints are not supported")
    pickle_start, pickle_length = members[f"{root}/data.pkl"]
    if pickle_length > MAX_PICKLE_BYTES:
        raise ModelFileError(f"data.pkl is {pickle_length} bytes, beyond the bound of {MAX_PICKLE_BYTES}")

    def member_size(key: str) -> int:
        if f"{root}/data/{key}" not in members:
            raise ModelFileError(f"storage {key!r} has no data member")
        return members[f"{root}/data/{key}"][1]

    refs: dict[str, StorageRef] = {}
    obj, used = load_pickle(_member_bytes(view, (pickle_start, pickle_length)), _storage_loader(refs, member_size))
    if used != pickle_length:
        raise ModelFileError(f"data.pkl has {pickle_length - used} bytes after its pickle")
    return obj, {key: members[f"{root}/data/{key}"] for key in refs}


def _member_bytes(view: mmap.mmap, member: tuple[int, int]) -> bytes:
    return view[member[0] : member[0] + member[1]]


def _load_legacy(view: mmap.mmap) -> tuple[object, _Storages, list[str]]:
    position = 0

    def next_pickle(persistent_load: Callable[[object], object] | None = None) -> object:
        nonlocal position
        chunk = view[position : position + MAX_PICKLE_BYTES]
        obj, used = load_pickle(chunk, persistent_load) if persistent_load else load_pickle(chunk)
        position += used
        return obj

    magic = next_pickle()
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise ModelFileError("pickle file is not a torch checkpoint (no torch magic number)")
    protocol = next_pickle()
    if protocol != LEGACY_PROTOCOL:
        raise ModelFileError(f"unsupported legacy torch protocol {quoted(protocol)}")
    system = next_pickle()
    if not isinstance(system, dict) or system.get("little_endian") is not True:
        raise ModelFileError("big-endian or unlabelled legacy torch checkpoints are not supported")
    refs: dict[str, StorageRef] = {}
    obj = next_pickle(_storage_loader(refs, None))
    keys = next_pickle()
    if not isinstance(keys, list) or len(set(keys)) != len(keys) or set(keys) != set(refs):
        raise ModelFileError("legacy storage key list does not match the storages the checkpoint uses")
    storages: _Storages = {}
    for key in keys:
        ref = refs[key]
        if position + 8 > len(view):
            raise ModelFileError(f"truncated legacy checkpoint: storage {key!r} is missing")
        count = int.from_bytes(view[position : position + 8], "little")
        if count * _itemsize(ref.dtype) != ref.nbytes:
            raise ModelFileError(f"legacy storage {key!r} holds {count} elements, its reference declares {ref.nbytes} bytes")
        start, position = position + 8, position + 8 + ref.nbytes
        if position > len(view):
            raise ModelFileError(f"truncated legacy checkpoint: storage {key!r} runs past the end of the file")
        storages[key] = (start, ref.nbytes)
    trailing = len(view) - position
    return obj, storages, [f"{trailing} trailing bytes after the last storage"] if trailing else []


def _label(value: object) -> str:
    return value.global_name if isinstance(value, OpaqueObject) else type(value).__name__


def _unwrap(obj: object) -> tuple[object, list[str]]:
    """Step into one `state_dict`-like wrapper key (SD .ckpt files nest the weights there)."""
    if not isinstance(obj, dict) or any(isinstance(v, PickledTensor) for v in obj.values()):
        return obj, []
    key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
    if key is None:
        return obj, []
    ignored = [quoted(k, 60) for k in itertools.islice((k for k in obj if k != key), _LISTED_SKIPS)]
    more = f" and {len(obj) - 1 - len(ignored)} more" if len(obj) - 1 > len(ignored) else ""
    return obj[key], [f"ignored entries beside the state dict: {', '.join(ignored)}{more}"] if ignored else []


class _Tally:
    """Notes of one kind: all counted, the first few kept (a hostile file can make millions)."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, note: str) -> None:
        self.count += 1
        if len(self.examples) < _LISTED_SKIPS:
            self.examples.append(note)

    @property
    def more(self) -> str:
        return f" and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""


def _children(value: object) -> Iterator[tuple[object, object]] | None:
    if isinstance(value, dict):
        return iter(value.items())
    if type(value) in (list, tuple):
        return enumerate(value)  # type: ignore[arg-type]
    return None


def flatten_checkpoint(obj: object) -> tuple[dict[str, PickledTensor], list[str]]:
    """Tensor names (dotted paths below the state dict) → tensors, plus notes on what was ignored.

    Depth-first with one iterator per open container, so memory follows the nesting (≤ MAX_NESTING),
    not the number of values; at most MAX_WALKED_VALUES values are visited.
    """
    root, problems = _unwrap(obj)
    tensors: dict[str, PickledTensor] = {}
    skipped, repeated = _Tally(), _Tally()
    seen: set[int] = set()
    frames: list[tuple[str, Iterator[tuple[object, object]]]] = []
    walked = 0

    def enter(path: str, value: object) -> None:
        nonlocal walked
        walked += 1
        if walked > MAX_WALKED_VALUES:
            raise ModelFileError(f"checkpoint holds more than {MAX_WALKED_VALUES} values")
        if isinstance(value, PickledTensor):
            name = path or "tensor"
            if name in tensors:
                repeated.add(f"tensor name {quoted(name)} appears twice; kept the first")
            else:
                tensors[name] = value
            return
        children = _children(value)
        if children is None:
            skipped.add(f"{quoted(path, 60) if path else '<root>'} ({_label(value)})")
        elif id(value) in seen:
            repeated.add(f"container at {quoted(path)} is referenced twice; read once")
        elif len(frames) >= MAX_NESTING:
            raise ModelFileError(f"checkpoint nests containers more than {MAX_NESTING} deep")
        else:
            seen.add(id(value))
            frames.append((path, children))

    enter("", root)
    while frames:
        path, children = frames[-1]
        item = next(children, None)
        if item is None:
            frames.pop()
            continue
        key, child = item
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            skipped.add(f"{quoted(path, 60)}[{_label(key)} key]")
            continue
        enter(f"{path}.{key}" if path else str(key), child)
    problems += repeated.examples
    if repeated.more:
        problems.append(f"{repeated.more.strip()} repeated tensor names or shared containers")
    if skipped.count:
        problems.append(f"ignored {skipped.count} non-tensor values: {', '.join(skipped.examples)}{skipped.more}")
    return tensors, problems


class PyTorchReader(ModelReader):
    """A torch checkpoint (zip or legacy format), memory-mapped; tensors are views of its storages."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        with open(self.path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise ModelFileError("empty file")
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                if self._map[:4] == b"PK\x03\x04":
                    self.format = "pytorch-zip"
                    obj, self._storages = _load_zip(handle, self._map)
                    problems: list[str] = []
                else:
                    self.format = "pytorch-legacy"
                    obj, self._storages, problems = _load_legacy(self._map)
                self._tensors, flatten_problems = flatten_checkpoint(obj)
            except BaseException:
                self._map.close()
                raise
        self._problems = problems + flatten_problems
        viewed = sum(t.numel * dtype_named(t.dtype).bits // 8 for t in self._tensors.values())
        stored = sum(nbytes for _, nbytes in self._storages.values())
        if viewed > MAX_VIEW_AMPLIFICATION * stored + 2**20:
            self._map.close()
            raise ModelFileError(f"tensors view {viewed} bytes of only {stored} bytes of storage")

    def tensors(self) -> Sequence[TensorInfo]:
        return [TensorInfo(name, t.dtype, t.shape) for name, t in self._tensors.items()]

    def array(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        dtype = dtype_named(tensor.dtype).numpy
        assert dtype is not None  # torch dtypes are all whole bytes
        start, nbytes = self._storages[tensor.storage.key]
        storage = np.frombuffer(self._map, dtype=dtype, count=nbytes // dtype.itemsize, offset=start)
        if not tensor.numel:
            return storage[:0].reshape(tensor.shape)
        if tensor.is_contiguous():
            return storage[tensor.offset : tensor.offset + tensor.numel].reshape(tensor.shape)
        strides = tuple(step * dtype.itemsize for step in tensor.stride)
        return np.lib.stride_tricks.as_strided(storage[tensor.offset :], tensor.shape, strides, writeable=False)

    def problems(self) -> list[str]:
        return list(self._problems)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # arrays still view the map; it is released when the last one is collected
