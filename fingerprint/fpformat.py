"""The Fingerprint value and its compact, versioned, strictly validated serialisation.

Binary form: `MSFP`, a format byte, a u32 length, a zlib-compressed JSON header (scheme, key,
kind, base, precision, tensor names and view shapes), then the sketches. Deltas are stored as
float16 with one float32 scale per tensor (a delta's precision is relative to itself); raw
sketches (registered bases) as float32, because a delta is later taken as raw − base and needs
the base's digits. Fingerprints arrive from other platforms, so parsing trusts nothing.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.keys import SKETCH_SIZE, FingerprintKey
from modelsieve.fingerprint.sketch import sketch_shape

SCHEME_VERSION = 1
KINDS = ("checkpoint", "lora")
_MAGIC = b"MSFP"
_FORMAT = 1
_MAX_HEADER = 16 << 20
_MAX_TENSORS = 100_000
_MAX_NAME = 512
_MAX_DIM = 1 << 40


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """A model's keyed sketches, one per canonical tensor name.

    `kind` is "checkpoint" or "lora". A checkpoint with a `base` holds delta sketches
    S(model) − S(base); one without holds raw sketches (as registered bases do) and can only be
    used to find its base. A LoRA's sketches are of its ΔW, a delta by nature.
    `shapes` gives each tensor's 2-D (or 1-D) view shape; sketches are float64 arrays (k×k or k).
    `noise` is each sketch's expected squared norm from storage rounding (fp16/bf16/fp8 files),
    which scoring subtracts from energies.
    """

    kind: str
    base: str | None
    key_id: str
    key_check: str
    sketches: Mapping[str, np.ndarray]
    shapes: Mapping[str, tuple[int, ...]]
    noise: Mapping[str, float]
    scheme: int = SCHEME_VERSION
    source: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"tensors_skipped": 3}; informational

    @property
    def is_delta(self) -> bool:
        """True when the sketches describe a change from a base (LoRAs, based checkpoints)."""
        return self.kind == "lora" or self.base is not None

    def check_compatible(self, other: Fingerprint) -> None:
        """Raise FingerprintMismatchError unless both were taken with one scheme and one key."""
        if self.scheme != other.scheme:
            raise FingerprintMismatchError(f"fingerprint scheme {self.scheme} cannot be compared with scheme {other.scheme}")
        if (self.key_id, self.key_check) != (other.key_id, other.key_check):
            raise FingerprintMismatchError(
                f"fingerprints were taken with different keys ({self.key_id}/{self.key_check} vs "
                f"{other.key_id}/{other.key_check}); re-fingerprint with the same key"
            )

    def restricted(self, names: Iterable[str]) -> Fingerprint:
        """The same fingerprint over only the given tensor names (those it has)."""
        keep = [n for n in names if n in self.sketches]
        return Fingerprint(self.kind, self.base, self.key_id, self.key_check, {n: self.sketches[n] for n in keep},
                           {n: self.shapes[n] for n in keep}, {n: self.noise[n] for n in keep}, self.scheme, self.source)

    def to_bytes(self) -> bytes:
        """The compact binary form (see the module docstring)."""
        names = sorted(self.sketches)  # canonical order: file order must not change the bytes
        precision = "f16" if self.is_delta else "f32"
        header = {
            "scheme": self.scheme, "key_id": self.key_id, "key_check": self.key_check, "kind": self.kind,
            "base": self.base, "k": SKETCH_SIZE, "precision": precision,
            "tensors": [[n, list(self.shapes[n])] for n in names], "source": dict(self.source),
        }
        packed = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
        flat = [np.asarray(self.sketches[n], dtype=np.float64).ravel() for n in names]
        noise = np.array([self.noise[n] for n in names], dtype="<f4").tobytes()
        if precision == "f16":
            scales = np.array([np.abs(v).max() if v.size else 0.0 for v in flat], dtype=np.float32)
            safe = np.where(scales > 0, scales, 1).astype(np.float64)
            values = np.concatenate([v / s for v, s in zip(flat, safe, strict=True)] or [np.zeros(0)]).astype("<f2")
            payload = noise + scales.astype("<f4").tobytes() + values.tobytes()
        else:
            payload = noise + np.concatenate(flat or [np.zeros(0)]).astype("<f4").tobytes()
        return _MAGIC + struct.pack("<BI", _FORMAT, len(packed)) + packed + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        """Parse and validate the binary form; FingerprintError on anything malformed."""
        if len(data) < 9 or data[:4] != _MAGIC:
            raise FingerprintError("not a modelsieve fingerprint (bad magic)")
        version, length = struct.unpack("<BI", data[4:9])
        if version != _FORMAT:
            raise FingerprintError(f"unsupported fingerprint format {version}")
        if length > _MAX_HEADER or 9 + length > len(data):
            raise FingerprintError("fingerprint header length runs past the data")
        try:
            header = json.loads(zlib.decompressobj().decompress(data[9 : 9 + length], _MAX_HEADER))
        except (zlib.error, ValueError, RecursionError):
            raise FingerprintError("fingerprint header is not compressed JSON") from None
        names, shapes, precision = _parse_header(header)
        counts = [SKETCH_SIZE ** len(s) for s in shapes]
        payload = memoryview(data)[9 + length :]
        width = 4 if precision == "f32" else 2
        expected = sum(counts) * width + 4 * len(names) * (2 if precision == "f16" else 1)
        if len(payload) != expected:
            raise FingerprintError(f"fingerprint payload is {len(payload)} bytes, its header needs {expected}")
        with np.errstate(invalid="ignore"):  # hostile bytes: signalling NaNs cast, inf · 0; refused just below
            noise = np.frombuffer(payload[: 4 * len(names)], dtype="<f4").astype(np.float64)
            payload = payload[4 * len(names) :]
            if precision == "f16":
                scales = np.frombuffer(payload[: 4 * len(names)], dtype="<f4").astype(np.float64)
                values = np.frombuffer(payload[4 * len(names) :], dtype="<f2").astype(np.float64)
                values = values * np.repeat(scales, counts)
            else:
                values = np.frombuffer(payload, dtype="<f4").astype(np.float64)
        if not (np.isfinite(values).all() and np.isfinite(noise).all() and (noise >= 0).all()):
            raise FingerprintError("fingerprint holds NaN or infinite values")
        sketches, offset = {}, 0
        for name, shape, count in zip(names, shapes, counts, strict=True):
            sketches[name] = values[offset : offset + count].reshape(sketch_shape(shape))
            offset += count
        return cls(header["kind"], header["base"], header["key_id"], header["key_check"], sketches,
                   dict(zip(names, shapes, strict=True)), dict(zip(names, noise.tolist(), strict=True)),
                   header["scheme"], header["source"])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary plus the binary form in base64 (`data`), which `from_json` reads back."""
        return {
            "scheme": self.scheme, "key_id": self.key_id, "key_check": self.key_check, "kind": self.kind,
            "base": self.base, "tensors": len(self.sketches),
            "data": base64.b64encode(self.to_bytes()).decode("ascii"),
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Fingerprint:
        """The fingerprint inside a `to_json()` record."""
        data = record.get("data") if isinstance(record, Mapping) else None
        if not isinstance(data, str):
            raise FingerprintError("fingerprint JSON has no base64 `data` field")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            raise FingerprintError("fingerprint JSON `data` is not base64") from None
        return cls.from_bytes(raw)


def _parse_header(header: object) -> tuple[list[str], list[tuple[int, ...]], str]:
    if not isinstance(header, dict):
        raise FingerprintError("fingerprint header is not a JSON object")
    checks = {
        "scheme": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "key_id": lambda v: isinstance(v, str) and 0 < len(v) <= 64,
        "key_check": lambda v: isinstance(v, str) and len(v) <= 64,
        "kind": lambda v: v in KINDS,
        "base": lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= 256),
        "k": lambda v: v == SKETCH_SIZE,
        "precision": lambda v: v in ("f16", "f32"),
        "tensors": lambda v: isinstance(v, list) and len(v) <= _MAX_TENSORS,
        "source": lambda v: isinstance(v, dict),
    }
    for name, check in checks.items():
        if name not in header or not check(header[name]):
            raise FingerprintError(f"fingerprint header field {name!r} is missing or invalid")
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    for entry in header["tensors"]:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and 0 < len(entry[0]) <= _MAX_NAME
                and isinstance(entry[1], list) and len(entry[1]) in (1, 2)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= _MAX_DIM for d in entry[1])):
            raise FingerprintError("fingerprint header has a malformed tensor entry")
        names.append(entry[0])
        shapes.append(tuple(entry[1]))
    if len(set(names)) != len(names):
        raise FingerprintError("fingerprint header repeats a tensor name")
    return names, shapes, header["precision"]


def new_fingerprint(kind: str, base: str | None, key: FingerprintKey, sketches: Mapping[str, np.ndarray],
                    shapes: Mapping[str, tuple[int, ...]], noise: Mapping[str, float],
                    source: Mapping[str, Any] | None = None) -> Fingerprint:
    """A fingerprint stamped with the current scheme and the key's id and check value."""
    return Fingerprint(kind, base, key.key_id, key.check, dict(sketches), dict(shapes), dict(noise), SCHEME_VERSION,
                       dict(source or {}))
