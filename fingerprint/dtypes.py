"""The safetensors dtype table: bit widths and numpy dtypes (bfloat16 / float8 via ml_dtypes)."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    """One safetensors dtype: its name, bit width and the numpy dtype that views its bytes."""

    name: str
    bits: int
    numpy: np.dtype | None  # None: no numpy view (sub-byte packed formats)
    is_float: bool


def _dt(name: str, bits: int, numpy_type: type | None, is_float: bool) -> DType:
    return DType(name, bits, None if numpy_type is None else np.dtype(numpy_type).newbyteorder("<"), is_float)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        _dt("BOOL", 8, np.bool_, False),
        _dt("U8", 8, np.uint8, False),
        _dt("I8", 8, np.int8, False),
        _dt("I16", 16, np.int16, False),
        _dt("U16", 16, np.uint16, False),
        _dt("I32", 32, np.int32, False),
        _dt("U32", 32, np.uint32, False),
        _dt("I64", 64, np.int64, False),
        _dt("U64", 64, np.uint64, False),
        _dt("F16", 16, np.float16, True),
        _dt("BF16", 16, ml_dtypes.bfloat16, True),
        _dt("F32", 32, np.float32, True),
        _dt("F64", 64, np.float64, True),
        _dt("C64", 64, np.complex64, False),
        _dt("F8_E5M2", 8, ml_dtypes.float8_e5m2, True),
        _dt("F8_E4M3", 8, ml_dtypes.float8_e4m3fn, True),
        _dt("F8_E4M3FNUZ", 8, ml_dtypes.float8_e4m3fnuz, True),
        _dt("F8_E5M2FNUZ", 8, ml_dtypes.float8_e5m2fnuz, True),
        _dt("F8_E8M0", 8, ml_dtypes.float8_e8m0fnu, True),
        # Packed sub-byte floats: sized and validated, but not viewable element by element.
        _dt("F4", 4, None, True),
        _dt("F6_E2M3", 6, None, True),
        _dt("F6_E3M2", 6, None, True),
    )
}


def dtype_named(name: object) -> DType:
    """The DType for a safetensors dtype name; KeyError for anything unknown."""
    if not isinstance(name, str) or name not in DTYPES:
        raise KeyError(name)
    return DTYPES[name]
