"""Adapter files (LoRA, LoCon, LoHa, LoKr; kohya, PEFT and diffusers layouts) → ΔW sketches.

Plain LoRA modules are sketched straight from their factors, (α/r)·(RᵀB)(A C), never forming
ΔW; since that equals Rᵀ(BA)C exactly, any factorisation of the same ΔW (rank-resized, kohya ↔
PEFT converted) gives the same sketch. LoHa, LoKr and CP/Tucker LoCon modules are small, so
their ΔW is formed per module and sketched densely.
PEFT files carry no alpha tensors: their scale lora_alpha / r (lora_alpha / √r with rsLoRA,
per-module `alpha_pattern` overrides) comes from the `adapter_config.json` beside the weights
(`read_peft_scaling`), validated strictly; without one the scale is 1, as diffusers assumes, and
the fingerprint's source says so (similarity is unaffected, a strength estimate is off by
lora_alpha / r).
DoRA: the adapted weight is m·(W + ΔW)/‖W + ΔW‖ (norm per row or column), so its true change
needs the base weight W, which an adapter file does not carry and a registered base holds only
as a sketch. Fingerprints therefore sketch the directional part (scale)·BA exactly and leave out
the magnitude rescaling; the magnitude vector is validated (finite, sized like one axis of ΔW)
and the fingerprint's source counts the modules so approximated (a known limit, in the README).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError, ModelFileError
from modelsieve.fingerprint.keys import FingerprintKey
from modelsieve.fingerprint.names import NAME_CACHE_SIZE, module_weight_name
from modelsieve.fingerprint.readers.strict_json import load_json_object, read_json_object
from modelsieve.fingerprint.sketch import MAX_VIEW_SIDE, LeftOut, rounding_error, sketch_product, sketch_tensors, view_shape

_SUFFIX = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_down|lora_up|lora_mid|lora_A|lora_B|"
    r"hada_w1_a|hada_w1_b|hada_w2_a|hada_w2_b|hada_t1|hada_t2|"
    r"lokr_w1|lokr_w1_a|lokr_w1_b|lokr_w2|lokr_w2_a|lokr_w2_b|lokr_t2)(?:\.default)?(?:\.weight)?$"
    r"|^(?P<module2>.+?)\.(?P<part2>alpha|dora_scale|lora_magnitude_vector(?:\.default)?(?:\.weight)?)$"
    r"|^(?P<module3>.+?)[._]lora\.(?P<part3>down|up)\.weight$"
)
_MAGNITUDE_PARTS = ("dora_scale", "lora_magnitude_vector")
PEFT_CONFIG = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20  # real adapter configs are a few KB
MAX_LORA_ALPHA = 1e5  # real lora_alpha values are 1–1024; larger ones are refused, not trusted
MAX_RANK = 1 << 16
MAX_PATTERNS = 10_000
MAX_DENSE_ELEMENTS = 1 << 26
"""Largest ΔW (and factor product) a LoHa, LoKr or CP LoCon module may form densely: 67 M elements
(512 MB in float64), above any image-model layer (Flux's largest is 38 M). Its size comes from the
factors' shapes, which the file chooses: two 2048 × 2048 LoKr factors (32 MB) would make a
128 TiB Kronecker product. Larger modules are left out and counted, as non-finite ones are."""


@dataclass(frozen=True)
class PeftScaling:
    """How PEFT scales B@A: lora_alpha / r, or lora_alpha / √r with rsLoRA (`use_rslora`).

    `alpha_pattern` maps module-name suffixes (PEFT's keys, matched literally, never as regular
    expressions) to a lora_alpha for those modules."""

    lora_alpha: float
    use_rslora: bool = False
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    def scale(self, module: str, rank: int) -> float:
        """The factor B@A is multiplied by in the adapter module `module` of rank `rank`."""
        alpha = next((a for suffix, a in self.alpha_pattern.items() if module == suffix or module.endswith("." + suffix)),
                     self.lora_alpha)
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


def _config_number(where: str, name: str, value: object, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= upper:
        raise ModelFileError(f"{where}: {name} must be a number in (0, {upper:g}], not {str(value)[:40]!r}")
    return float(value)


def parse_peft_config(data: bytes, where: str) -> PeftScaling | None:
    """The LoRA scaling the adapter_config.json bytes `data` describe (see `peft_scaling`)."""
    return peft_scaling(load_json_object(data, where), where)


def peft_scaling(config: Mapping[str, object], where: str) -> PeftScaling | None:
    """The LoRA scaling a parsed adapter config describes; None for other PEFT types (LoHa, IA³, ...).

    Strict: `lora_alpha` present and in (0, MAX_LORA_ALPHA], `r` (if given) a positive integer
    ≤ MAX_RANK, `use_rslora` a boolean, `alpha_pattern` an object of numbers. Anything else raises
    ModelFileError naming the file (`where`) and the field."""
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        return None
    if "lora_alpha" not in config:
        raise ModelFileError(f"{where}: a LORA adapter config without lora_alpha")
    alpha = _config_number(where, "lora_alpha", config["lora_alpha"], MAX_LORA_ALPHA)
    rank = config.get("r")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank <= MAX_RANK):
        raise ModelFileError(f"{where}: r must be an integer in 1..{MAX_RANK}, not {str(rank)[:40]!r}")
    rslora = config.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise ModelFileError(f"{where}: use_rslora must be true or false")
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict) or len(patterns) > MAX_PATTERNS:
        raise ModelFileError(f"{where}: alpha_pattern must be an object of at most {MAX_PATTERNS} entries")
    pattern = {k: _config_number(where, f"alpha_pattern[{k[:40]!r}]", v, MAX_LORA_ALPHA) for k, v in patterns.items()}
    return PeftScaling(alpha, rslora, pattern)


def read_peft_scaling(model_path: str | os.PathLike[str]) -> PeftScaling | None:
    """The scaling in the adapter_config.json beside a weights file (or inside a folder); None if there is none."""
    path = Path(model_path)
    config = (path if path.is_dir() else path.parent) / PEFT_CONFIG
    if not config.is_file():
        return None
    return peft_scaling(read_json_object(config, MAX_CONFIG_BYTES), str(config))


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


def is_adapter(sizes: Mapping[str, int]) -> bool:
    """True when adapter parts (LoRA / LyCORIS) make up most of a file's tensors, by count or by bytes.

    `sizes` maps every tensor name to its byte size. Bytes count too: padding a LoRA with thousands
    of tiny junk tensors (loaders ignore keys they do not know) must not turn it into a "checkpoint"
    whose fingerprint no listed LoRA can match."""
    parts = [name for name in sizes if split_adapter_key(name) is not None]
    if not parts:
        return False
    return len(parts) * 2 >= len(sizes) or sum(sizes[name] for name in parts) * 2 >= sum(sizes.values())


def _require(module: str, parts: Mapping[str, np.ndarray], *names: str) -> None:
    missing = [n for n in names if n not in parts]
    if missing:
        raise FingerprintError(f"adapter module {module!r} lacks {', '.join(missing)}")
    empty = [n for n in names if parts[n].size == 0 or parts[n].ndim < (0 if n == "alpha" else 2)]
    if empty:
        raise FingerprintError(f"adapter module {module!r}: {', '.join(empty)} must be a non-empty matrix")


def _matrix(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)


class _NonFiniteModule(FingerprintError):
    """An adapter module holds NaN or infinite values: it is left out, the rest still fingerprints."""


def _alpha(parts: Mapping[str, np.ndarray], rank: int) -> float:
    if "alpha" not in parts:
        return float(rank)
    alpha = np.asarray(parts["alpha"], dtype=np.float64)
    if alpha.size != 1:
        raise FingerprintError("alpha must be one number")
    if not np.isfinite(alpha).all():
        raise _NonFiniteModule("alpha is NaN or infinite")
    return float(alpha.reshape(()))


def _lora_factors(module: str, parts: Mapping[str, np.ndarray], peft: PeftScaling | None) -> tuple[np.ndarray, np.ndarray, float]:
    """(up, down, scale) of a plain LoRA module as 2-D matrices, checked to multiply.

    The scale is alpha / r from the module's alpha tensor, else (PEFT lora_A/lora_B modules) from
    the PEFT config when there is one, else 1 for PEFT modules and alpha = r for kohya ones."""
    peft_names = "lora_up" not in parts and "lora_down" not in parts
    up_key, down_key = ("lora_B", "lora_A") if peft_names else ("lora_up", "lora_down")
    _require(module, parts, up_key, down_key)
    up, down = parts[up_key], parts[down_key]
    if math.prod(up.shape[2:]) != 1:
        raise FingerprintError(f"adapter module {module!r}: factor shapes {tuple(up.shape)} and {tuple(down.shape)} are not a LoRA pair")
    rank = down.shape[0]
    if up.shape[1] != rank:
        raise FingerprintError(
            f"adapter module {module!r}: factors do not multiply (up {tuple(up.shape)} × down {tuple(down.shape)})"
        )
    if not (np.isfinite(up).all() and np.isfinite(down).all()):
        raise _NonFiniteModule(f"adapter module {module!r}: factors hold NaN or infinite values")
    if peft_names and "alpha" not in parts:
        return _matrix(up), _matrix(down), peft.scale(module, rank) if peft is not None else 1.0
    return _matrix(up), _matrix(down), _alpha(parts, rank) / rank


def _check_magnitude(module: str, magnitude: np.ndarray, shape: tuple[int, ...]) -> None:
    """A DoRA magnitude vector must be finite and hold one value per output row or per input column."""
    if magnitude.size not in shape or magnitude.size != max(magnitude.shape, default=1):
        raise FingerprintError(
            f"adapter module {module!r}: DoRA magnitude of shape {tuple(magnitude.shape)} fits neither axis of ΔW {shape}"
        )
    if not np.isfinite(np.asarray(magnitude, dtype=np.float64)).all():
        raise _NonFiniteModule(f"adapter module {module!r}: DoRA magnitude holds NaN or infinite values")


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


def _rows(array: np.ndarray) -> int:
    return array.shape[0] if array.ndim else 1


def _product_size(parts: Mapping[str, np.ndarray], a: str, b: str, whole: str | None = None) -> int:
    """Elements of the factor product `_dense_delta` forms from parts a @ b (or of the whole part)."""
    if whole and whole in parts:
        return parts[whole].size
    if a not in parts or b not in parts:
        return 0  # _dense_delta names what is missing
    return _rows(parts[a]) * math.prod(parts[b].shape[1:])


def _dense_size(parts: Mapping[str, np.ndarray]) -> int:
    """The largest array `_dense_delta` would form, from the parts' shapes alone."""
    if "lora_mid" in parts:
        if not {"lora_up", "lora_down"} <= parts.keys():
            return 0
        return _rows(parts["lora_up"]) * math.prod(parts["lora_down"].shape[1:]) * math.prod(parts["lora_mid"].shape[2:])
    if "hada_w1_a" in parts:
        return max(_product_size(parts, "hada_w1_a", "hada_w1_b"), _product_size(parts, "hada_w2_a", "hada_w2_b"))
    first, second = _product_size(parts, "lokr_w1_a", "lokr_w1_b", "lokr_w1"), _product_size(parts, "lokr_w2_a", "lokr_w2_b", "lokr_w2")
    return max(first, second, first * second)


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
    # the rank of a factor pair actually used (a stray lokr_w*_b beside a whole lokr_w* is ignored, unvalidated)
    rank_source = next((b for whole, b in (("lokr_w2", "lokr_w2_b"), ("lokr_w1", "lokr_w1_b")) if whole not in parts and b in parts), None)
    scale = 1.0 if rank_source is None else _alpha(parts, parts[rank_source].shape[0]) / parts[rank_source].shape[0]
    if w1.ndim != 2:
        raise FingerprintError(f"adapter module {module!r}: lokr_w1 must be 2-D, got {w1.shape}")
    w1 = w1.reshape(w1.shape + (1,) * (w2.ndim - 2))
    return np.kron(w1, w2) * scale


@dataclass(frozen=True)
class AdapterSketches:
    """An adapter's ΔW sketches by canonical weight name, with what a fingerprint records about them."""

    sketches: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]  # view shapes
    noise: dict[str, float]  # expected rounding-noise energies
    skipped: int  # keys that are no adapter part
    notes: dict[str, object]  # for the fingerprint's source: where PEFT scales came from, DoRA approximations


def adapter_sketches(key: FingerprintKey, arrays: Mapping[str, np.ndarray], peft: PeftScaling | None = None) -> AdapterSketches:
    """ΔW sketches of every adapter module, keyed by the canonical name of the weight it patches.

    `peft`: the scaling from the adapter's adapter_config.json (`read_peft_scaling`), if any.
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
    left_out = LeftOut()
    first_error: FingerprintError | None = None
    peft_modules = dora_modules = merged = 0
    for module, parts in modules.items():
        magnitude = next((parts[p] for p in _MAGNITUDE_PARTS if p in parts), None)
        parts = {p: a for p, a in parts.items() if p not in _MAGNITUDE_PARTS}
        if set(parts) <= {"alpha"}:
            continue
        target = module_weight_name(module)
        try:
            if "lora_mid" in parts or any(p.startswith(("hada_", "lokr_")) for p in parts):
                if _dense_size(parts) > MAX_DENSE_ELEMENTS:
                    left_out.add(target, "oversized")
                    continue
                with np.errstate(invalid="ignore", over="ignore"):  # non-finite deltas are left out below
                    delta = _dense_delta(module, parts)
                shape, sketch = view_shape(delta.shape) or (), None
            else:
                up, down, scale = _lora_factors(module, parts, peft)
                shape = (up.shape[0], down.shape[1])
                if max(shape) > MAX_VIEW_SIDE:
                    left_out.add(target, "oversized")
                    continue
                sketch = sketch_product(key, up, down, scale)
            if magnitude is not None:
                _check_magnitude(module, magnitude, shape)
        except _NonFiniteModule:
            left_out.add(target, "non_finite")
            continue
        except FingerprintError as exc:  # loaders skip a module they cannot apply: one such decoy must not hide the rest
            first_error = first_error or exc
            left_out.add(target, "malformed")
            continue
        if target in shapes:  # two layouts naming one weight: loaders apply both patches, so ΔW is their sum
            if shapes[target] != shape:
                first_error = first_error or FingerprintError(
                    f"two adapter modules patch the weight {target!r} with shapes {shapes[target]} and {shape}")
                left_out.add(target, "malformed")
                continue
            merged += 1
        shapes[target] = shape
        # each stored factor adds its relative rounding error to the product
        rounding[target] = max(rounding.get(target, 0.0), 2 * max(rounding_error(a.dtype) for a in parts.values()) ** 2)
        if sketch is None:
            dense.append((target, delta))
        else:
            sketches[target] = sketches[target] + sketch if target in sketches else sketch
            peft_modules += "lora_B" in parts and "alpha" not in parts
        dora_modules += magnitude is not None
    for target, sketch in sketch_tensors(key, dense, left_out=left_out).items():  # sums a target's modules
        sketches[target] = sketches[target] + sketch if target in sketches else sketch
    for target in left_out.all() & set(sketches):  # a module of this target was left out: its ΔW is unknown
        del sketches[target]
    if not sketches and left_out.all():
        raise first_error if first_error is not None and left_out.names["malformed"] else left_out.error("adapter module")
    shapes = {n: shapes[n] for n in sketches}
    noise = {n: rounding[n] * float(np.sum(s * s)) for n, s in sketches.items()}
    notes: dict[str, object] = {}
    if peft_modules:
        notes["peft_scale"] = "adapter_config.json" if peft is not None else "assumed 1 (no adapter_config.json)"
    if dora_modules:
        notes["dora_magnitude_left_out"] = dora_modules
    if merged:
        notes["modules_summed"] = merged
    return AdapterSketches(sketches, shapes, noise, ignored, notes | left_out.notes())
