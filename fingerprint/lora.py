"""Adapter files (LoRA, LoCon, LoHa, LoKr; kohya, PEFT and diffusers layouts) → ΔW sketches.

Plain LoRA modules are sketched straight from their factors, (α/r)·(RᵀB)(A C), never forming
ΔW; since that equals Rᵀ(BA)C exactly, any factorisation of the same ΔW (rank-resized, kohya ↔
PEFT converted) gives the same sketch. LoHa, LoKr and CP/Tucker LoCon modules are small, so
their ΔW is formed per module and sketched densely.
DoRA: the magnitude vector (`dora_scale`, `lora_magnitude_vector`) rescales W + ΔW by norms of
the base weight, which an adapter file does not carry; fingerprints cover the directional ΔW
only and ignore the magnitude (a known limit, stated in the README).
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.keys import FingerprintKey
from modelsieve.fingerprint.names import NAME_CACHE_SIZE, module_weight_name
from modelsieve.fingerprint.sketch import rounding_error, sketch_product, sketch_tensors, view_shape

_SUFFIX = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_down|lora_up|lora_mid|lora_A|lora_B|"
    r"hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|hada_t1|hada_t2|"
    r"lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2)(?:\.default)?(?:\.weight)?$"
    r"|^(?P<module2>.+?)\.(?P<part2>alpha|dora_scale|lora_magnitude_vector(?:\.default)?(?:\.weight)?)$"
    r"|^(?P<module3>.+?)[._]lora\.(?P<part3>down|up)\.weight$"
)
_IGNORED_PARTS = ("dora_scale", "lora_magnitude_vector")


@functools.lru_cache(maxsize=NAME_CACHE_SIZE)  # pure; asked for every tensor name of every file
def split_adapter_key(key: str) -> tuple[str, str] | None:
    """(module stem, part) for an adapter tensor key, e.g. ('lora_unet_..._to_q', 'lora_down'); None otherwise."""
    match = _SUFFIX.match(key)
    if match is None:
        return None
    if match.group("module3"):
        return match.group("module3"), {"down": "lora_down", "up": "lora_up"}[match.group("part3")]
    if match.group("module2"):
        return match.group("module2"), match.group("part2").split(".")[0]
    return match.group("module"), match.group("part")


def is_adapter(keys: list[str]) -> bool:
    """True when most tensors of a file are adapter parts (LoRA / LyCORIS)."""
    parts = sum(split_adapter_key(k) is not None for k in keys)
    return parts > 0 and parts * 2 >= len(keys)


def _require(module: str, parts: Mapping[str, np.ndarray], *names: str) -> None:
    missing = [n for n in names if n not in parts]
    if missing:
        raise FingerprintError(f"adapter module {module!r} lacks {', '.join(missing)}")
    empty = [n for n in names if parts[n].size == 0 or parts[n].ndim < (0 if n == "alpha" else 2)]
    if empty:
        raise FingerprintError(f"adapter module {module!r}: {', '.join(empty)} must be a non-empty matrix")


def _matrix(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)


def _alpha(parts: Mapping[str, np.ndarray], rank: int) -> float:
    if "alpha" not in parts:
        return float(rank)
    alpha = np.asarray(parts["alpha"], dtype=np.float64)
    if alpha.size != 1 or not np.isfinite(alpha).all():
        raise FingerprintError("alpha must be one finite number")
    return float(alpha.reshape(()))


def _lora_factors(module: str, parts: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """(up, down, scale) of a plain LoRA module as 2-D matrices, checked to multiply."""
    up_key, down_key = ("lora_up", "lora_down") if "lora_up" in parts or "lora_down" in parts else ("lora_B", "lora_A")
    _require(module, parts, up_key, down_key)
    up, down = parts[up_key], parts[down_key]
    if math.prod(up.shape[2:]) != 1:
        raise FingerprintError(f"adapter module {module!r}: factor shapes {tuple(up.shape)} and {tuple(down.shape)} are not a LoRA pair")
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise FingerprintError(
            f"adapter module {module!r}: factors do not multiply (up {tuple(up.shape)} × down {tuple(down.shape)})"
        )
    return _matrix(up), _matrix(down), _alpha(parts, rank) / rank


def _cp_delta(module: str, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """ΔW of a CP-decomposed LoCon conv: ΔW[o,i,h,w] = scale · Σ up[o,a] mid[a,b,h,w] down[b,i]."""
    _require(module, parts, "lora_up", "lora_mid", "lora_down")
    up, mid, down = (np.asarray(parts[p], dtype=np.float64) for p in ("lora_up", "lora_mid", "lora_down"))
    if up.ndim != 4 or down.ndim != 4 or mid.ndim != 4 or mid.shape[:2] != (up.shape[1], down.shape[0]):
        raise FingerprintError(
            f"adapter module {module!r}: lora_up {up.shape}, lora_mid {mid.shape}, lora_down {down.shape} do not fit together"
        )
    rank = down.shape[0]
    return np.einsum("oa,abhw,bi->oihw", _matrix(up), mid, _matrix(down)) * (_alpha(parts, rank) / rank)


def _dense_delta(module: str, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """ΔW of a LoHa, LoKr or CP LoCon module, formed explicitly (these modules are small)."""
    if "lora_mid" in parts:
        return _cp_delta(module, parts)
    def product(a: str, b: str, whole: str | None = None) -> np.ndarray:
        if whole and whole in parts:
            _require(module, parts, whole)
            return np.asarray(parts[whole], dtype=np.float64)
        _require(module, parts, a, b)
        left, right = _matrix(parts[a]), np.asarray(parts[b], dtype=np.float64)
        if left.shape[1] != right.shape[0]:
            raise FingerprintError(f"adapter module {module!r}: {a} {left.shape} and {b} {right.shape} do not multiply")
        return (left @ right.reshape(right.shape[0], -1)).reshape((left.shape[0], *right.shape[1:]))

    if "hada_t1" in parts or "hada_t2" in parts or "lokr_t2" in parts:
        raise FingerprintError(f"adapter module {module!r}: LyCORIS Tucker factors (hada_t*/lokr_t2) are not supported")
    if "hada_w1_a" in parts:
        first, second = product("hada_w1_a", "hada_w1_b"), product("hada_w2_a", "hada_w2_b")
        if first.shape != second.shape:
            raise FingerprintError(f"adapter module {module!r}: LoHa halves have shapes {first.shape} and {second.shape}")
        rank = parts["hada_w1_b"].shape[0]
        return first * second * (_alpha(parts, rank) / rank)
    w1, w2 = product("lokr_w1_a", "lokr_w1_b", "lokr_w1"), product("lokr_w2_a", "lokr_w2_b", "lokr_w2")
    rank_source = "lokr_w2_b" if "lokr_w2_b" in parts else "lokr_w1_b" if "lokr_w1_b" in parts else None
    scale = 1.0 if rank_source is None else _alpha(parts, parts[rank_source].shape[0]) / parts[rank_source].shape[0]
    if w1.ndim != 2:
        raise FingerprintError(f"adapter module {module!r}: lokr_w1 must be 2-D, got {w1.shape}")
    w1 = w1.reshape(w1.shape + (1,) * (w2.ndim - 2))
    return np.kron(w1, w2) * scale


def adapter_sketches(
    key: FingerprintKey, arrays: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]], dict[str, float], int]:
    """ΔW sketches of every adapter module, keyed by the canonical name of the weight it patches.

    Returns (sketches, view shapes, expected rounding-noise energies, number of non-adapter keys).
    """
    modules: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    ignored = 0
    for name, array in arrays.items():
        split = split_adapter_key(name)
        if split is None:
            ignored += 1
            continue
        modules[split[0]][split[1]] = array
    sketches: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    rounding: dict[str, float] = {}
    dense: list[tuple[str, np.ndarray]] = []
    for module, parts in modules.items():
        parts = {p: a for p, a in parts.items() if p not in _IGNORED_PARTS}
        if set(parts) <= {"alpha"}:
            continue
        target = module_weight_name(module)
        if target in shapes:
            raise FingerprintError(f"two adapter modules patch the same weight {target!r}")
        # each stored factor adds its relative rounding error to the product
        rounding[target] = 2 * max(rounding_error(a.dtype) for a in parts.values()) ** 2
        if "lora_mid" in parts or any(p.startswith(("hada_", "lokr_")) for p in parts):
            delta = _dense_delta(module, parts)
            shapes[target] = view_shape(delta.shape) or ()
            dense.append((target, delta))
            continue
        up, down, scale = _lora_factors(module, parts)
        sketches[target] = sketch_product(key, up, down, scale)
        shapes[target] = (up.shape[0], down.shape[1])
    sketches.update(sketch_tensors(key, dense))
    noise = {n: rounding[n] * float(np.sum(s * s)) for n, s in sketches.items()}
    return sketches, shapes, noise, ignored
