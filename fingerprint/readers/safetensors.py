"""Strict safetensors header validation and a zero-copy, memory-mapped reader.

`parse_header` works on header bytes alone, so callers that only hold the first bytes of a
remote file (the crawler's Range requests) validate exactly as strictly as the local reader.
The rules are those of the official library (tests/test_readers_safetensors.py cross-checks them
against `safetensors.safe_open`), including what it lets pass: a tensor name repeated in the header
(the last entry wins, as in every JSON reader loaders use), a repeated `__metadata__` key (the same)
and unknown fields in a tensor entry (ignored). These are read exactly as loaders read them and
named in the header's `problems`: refusing them would let one edit to the header of a listed file
hide it from AutoV3 and from fingerprints while every loader still loads it.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelsieve.fingerprint.dtypes import DTYPES, dtype_named
from modelsieve.fingerprint.errors import ModelFileError, quoted
from modelsieve.fingerprint.readers.base import ModelReader, TensorInfo
from modelsieve.fingerprint.readers.strict_json import RepeatedKeys, load_json_object

MAX_HEADER_BYTES = 100_000_000  # the official library's bound
_TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_LISTED_PROBLEMS = 10
_U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class TensorSpan:
    """A tensor and its byte range [begin, end) relative to the start of the data buffer."""

    info: TensorInfo
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: metadata and tensor spans sorted by offset."""

    header_length: int
    metadata: dict[str, str]
    spans: tuple[TensorSpan, ...]
    problems: tuple[str, ...] = ()  # oddities loaders let pass, read as they read them

    @property
    def data_start(self) -> int:
        """Absolute file offset of the data buffer (8 + header length)."""
        return 8 + self.header_length

    @property
    def data_length(self) -> int:
        return self.spans[-1].end if self.spans else 0

    @property
    def file_size(self) -> int:
        """The exact size a file with this header must have."""
        return self.data_start + self.data_length


def read_header_length(first_bytes: bytes, file_size: int | None = None) -> int:
    """The header length N from a file's first 8 bytes, bounded by the file size and MAX_HEADER_BYTES."""
    if len(first_bytes) < 8:
        raise ModelFileError(f"truncated safetensors file: {len(first_bytes)} bytes, need at least 8")
    (length,) = struct.unpack("<Q", first_bytes[:8])
    if length > MAX_HEADER_BYTES:
        raise ModelFileError(f"safetensors header length {length} exceeds the bound of {MAX_HEADER_BYTES} bytes")
    if file_size is not None and 8 + length > file_size:
        raise ModelFileError(f"safetensors header length {length} runs past the end of the {file_size}-byte file")
    if length < 2:
        raise ModelFileError(f"safetensors header length {length} is too small for a JSON object")
    return length


def _is_uint(value: object) -> bool:
    # `type(...) is int`: JSON numbers are exactly int or float, and bool (an int subclass) is refused.
    return type(value) is int and 0 <= value <= _U64_MAX


def _parse_tensor(name: str, raw: object, problems: list[str]) -> TensorSpan:
    """One tensor entry, validated in a single pass (this runs for every tensor of every header)."""
    if type(raw) is not dict:
        if isinstance(raw, RepeatedKeys):
            raise ModelFileError(f"tensor {quoted(name)}: repeats the field {quoted(raw.repeated[0])}")
        raise ModelFileError(f"tensor {quoted(name)}: entry is not a JSON object")
    if raw.keys() != _TENSOR_FIELDS:
        if not _TENSOR_FIELDS <= raw.keys():
            raise ModelFileError(f"tensor {quoted(name)}: needs the fields dtype, shape, data_offsets, got {quoted(sorted(raw))}")
        problems.append(f"tensor {quoted(name)}: ignored unknown fields {quoted(sorted(raw.keys() - _TENSOR_FIELDS))}")
    dtype_name, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    dtype = DTYPES.get(dtype_name) if type(dtype_name) is str else None
    if dtype is None:
        raise ModelFileError(f"tensor {quoted(name)}: unknown dtype {quoted(dtype_name)}")
    if type(shape) is not list:
        raise ModelFileError(f"tensor {quoted(name)}: shape must be a list of non-negative integers")
    numel = 1
    for dim in shape:
        if type(dim) is not int or not 0 <= dim <= _U64_MAX:
            raise ModelFileError(f"tensor {quoted(name)}: shape must be a list of non-negative integers")
        numel *= dim
    if type(offsets) is not list or len(offsets) != 2 or not (_is_uint(offsets[0]) and _is_uint(offsets[1])):
        raise ModelFileError(f"tensor {quoted(name)}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise ModelFileError(f"tensor {quoted(name)}: data_offsets end {end} is before begin {begin}")
    if numel > _U64_MAX or numel == 0:  # a 0 can hide an overflow earlier in the shape
        _check_no_overflow(name, shape)
    bits = numel * dtype.bits
    if bits % 8:
        raise ModelFileError(f"tensor {quoted(name)}: {numel} × {dtype.bits} bits is not a whole number of bytes")
    if end - begin != bits // 8:
        raise ModelFileError(
            f"tensor {quoted(name)}: byte span {end - begin} does not match shape {quoted(shape)} × {dtype.name} = {bits // 8} bytes"
        )
    return TensorSpan(TensorInfo(name, dtype.name, tuple(shape)), begin, end)


def _check_no_overflow(name: str, shape: list[int]) -> None:
    """Refuse a shape whose running product passes 2⁶⁴−1 (a later 0 does not excuse it)."""
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > _U64_MAX:
            raise ModelFileError(f"tensor {quoted(name)}: shape {quoted(shape)} overflows")


def _parse_metadata(raw: object, problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ModelFileError("safetensors __metadata__ must be a map of strings to strings")
    if isinstance(raw, RepeatedKeys):
        problems.append(f"__metadata__ repeats the keys {quoted(list(raw.repeated))}; read the last of each, as loaders do")
    return dict(raw)


def _summary(problems: list[str]) -> tuple[str, ...]:
    if len(problems) <= _LISTED_PROBLEMS:
        return tuple(problems)
    return (*problems[:_LISTED_PROBLEMS], f"and {len(problems) - _LISTED_PROBLEMS} more header oddities")


def parse_header(header: bytes, file_size: int | None = None) -> SafetensorsHeader:
    """Validate the N header bytes that follow the length prefix.

    With `file_size`, also require the file to end exactly where the last tensor ends.
    """
    document = load_json_object(header, "safetensors header", keep_last=True)
    problems: list[str] = []
    if isinstance(document, RepeatedKeys):
        if "__metadata__" in document.repeated:
            raise ModelFileError("safetensors header repeats the key '__metadata__'")  # as the official library
        problems.append(
            f"header names the tensors {quoted(list(document.repeated))} more than once; read the last entry of each, as loaders do"
        )
    raw_metadata = document.pop("__metadata__", None)
    metadata = {} if raw_metadata is None else _parse_metadata(raw_metadata, problems)
    spans = sorted((_parse_tensor(name, raw, problems) for name, raw in document.items()), key=lambda s: (s.begin, s.end))
    position = 0
    for span in spans:
        if span.begin != position:
            problem = "overlaps the previous tensor" if span.begin < position else f"leaves a gap at byte {position}"
            raise ModelFileError(f"tensor {quoted(span.info.name)}: data_offsets [{span.begin}, {span.end}] {problem}")
        position = span.end
    parsed = SafetensorsHeader(len(header), metadata, tuple(spans), _summary(problems))
    if file_size is not None and parsed.file_size != file_size:
        if parsed.file_size > file_size:
            raise ModelFileError(
                f"truncated safetensors file: tensors need {parsed.file_size} bytes, the file has {file_size}"
            )
        raise ModelFileError(f"safetensors file has {file_size - parsed.file_size} trailing bytes after the last tensor")
    return parsed


class SafetensorsReader(ModelReader):
    """A validated, memory-mapped safetensors file."""

    format = "safetensors"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            length = read_header_length(handle.read(8), size)
            header_bytes = handle.read(length)
            if len(header_bytes) != length:
                raise ModelFileError(f"truncated safetensors header: read {len(header_bytes)} of {length} bytes")
            self.header = parse_header(header_bytes, size)
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata = self.header.metadata
        self._spans = {span.info.name: span for span in self.header.spans}

    def tensors(self) -> Sequence[TensorInfo]:
        return [span.info for span in self.header.spans]

    def problems(self) -> list[str]:
        return list(self.header.problems)

    def span(self, name: str) -> TensorSpan:
        """The tensor's byte range; KeyError when the file has no such tensor."""
        return self._spans[name]

    def array(self, name: str) -> np.ndarray:
        span = self._spans[name]
        dtype = dtype_named(span.info.dtype)
        if dtype.numpy is None:
            raise ModelFileError(f"tensor {quoted(name)}: dtype {dtype.name} is packed below one byte and has no array view")
        flat = np.frombuffer(self._map, dtype=dtype.numpy, count=span.info.numel, offset=self.header.data_start + span.begin)
        return flat.reshape(span.info.shape)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # arrays still view the map; it is released when the last one is collected
