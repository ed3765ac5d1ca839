"""Fuzzy tensor fingerprints: the one interface the store, the crawler and the CLI use.

    key = load_key()                                      # or PUBLIC_KEY, or FingerprintKey(...)
    base = BaseModel("sd15", fingerprint_model(open_model("sd15.safetensors"), key))
    fp = fingerprint_model(open_model("tune.safetensors"), key, bases=[base])   # delta vs sd15
    result = compare(fp, listed_fp)                       # similarity, score, coefficient, breakdown
    background = Background.from_cohort(benign_deltas)   # the base's shared benign directions
    compare(fp, listed_fp, background=background)         # unbiased merge coefficient, residual score
    Fingerprint.from_bytes(fp.to_bytes())                 # compact, versioned, validated

Candidate search for stores: `index_vectors`, `sign_codes`, `hamming_distances`, `lsh_keys`.
Partial reads (crawler): `select_tensors(infos)` says which tensors to fetch;
`fingerprint_tensors(arrays, key, bases)` fingerprints whatever arrays were fetched, and its
fingerprint compares with full listed fingerprints on the tensors both hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modelsieve.fingerprint.deltas import SAME_BASE_DISTANCE, BaseFit, BaseModel, change_from_base, delta, explain_no_base, nearest_base
from modelsieve.fingerprint.dtypes import DTYPES
from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.fpformat import SCHEME_VERSION, Fingerprint, new_fingerprint
from modelsieve.fingerprint.index import (
    CANDIDATE_MAX_HAMMING,
    INDEX_DIM,
    INDEX_ROLES,
    background_directions,
    hamming_distances,
    index_vectors,
    lsh_keys,
    sign_code,
    sign_codes,
)
from modelsieve.fingerprint.keys import PUBLIC_KEY, FingerprintKey, load_key, parse_key
from modelsieve.fingerprint.lora import PeftScaling, adapter_sketches, is_adapter, read_peft_scaling, split_adapter_key
from modelsieve.fingerprint.names import canonical_name, role_of, split_fused, stored_transposed
from modelsieve.fingerprint.readers import ModelReader, TensorInfo
from modelsieve.fingerprint.scoring import (
    DEFAULT_THRESHOLD,
    RESIDUAL_THRESHOLD,
    Background,
    Comparison,
    GroupScore,
    compare,
    tensor_weights,
)
from modelsieve.fingerprint.sketch import DEFAULT_THREADS, LeftOut, rounding_error, sketch_tensors, view_shape

__all__ = [
    "CANDIDATE_MAX_HAMMING", "DEFAULT_THRESHOLD", "INDEX_DIM", "PUBLIC_KEY", "RESIDUAL_THRESHOLD", "SAME_BASE_DISTANCE", "SCHEME_VERSION",
    "Background", "BaseFit", "BaseModel", "change_from_base",
    "Comparison", "Fingerprint", "FingerprintError", "FingerprintKey", "FingerprintMismatchError", "GroupScore", "background_directions",
    "compare", "fingerprint_model", "fingerprint_tensors", "hamming_distances", "index_vectors", "load_key",
    "lsh_keys", "nearest_base", "parse_key", "select_tensors", "sign_code", "sign_codes", "tensor_weights",
]

# Roles a partial read always fetches: the index tensors, and OpenCLIP's fused q/k/v they are split from.
_FETCH_ROLES = (*INDEX_ROLES, "self_attn.in_proj")
# Extra tensor roles a partial read adds, in order, while the byte budget allows (INDEX_ROLES come first, always).
_EXTRA_ROLES = ("attn2.to_q", "attn2.to_out", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out",
                "proj_in", "proj_out", "mlp.fc1", "mlp.fc2")


# Float dtypes with an array view: the only ones a fingerprint sketches (a set: asked for every tensor a crawl sees).
_FLOAT_DTYPES = frozenset(name for name, dtype in DTYPES.items() if dtype.is_float and dtype.numpy is not None)


def _is_float(dtype: str) -> bool:
    return dtype in _FLOAT_DTYPES


def _canonical_parts(key: str, name: str, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The canonical tensors one stored tensor holds: itself, its transpose, or OpenCLIP's q, k, v rows."""
    if stored_transposed(key) and array.ndim == 2:
        return [(name, array.T)]
    parts = split_fused(name)
    if parts is not None and array.ndim >= 1 and array.shape[0] % 3 == 0:
        return list(zip(parts, np.split(array, 3), strict=True))
    return [(name, array)]


def _checkpoint_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int]:
    """Float arrays under canonical names (EMA copies and buffers dropped), how many keys were
    skipped, and how many canonical names two keys claimed.

    Two keys in different layouts can name one weight (`model.diffusion_model.input_blocks.0.0.weight`
    and `unet.conv_in.weight`); loaders ignore the one they do not expect, so refusing the model let
    one planted key hide it. The larger tensor is kept (a decoy must be as large as the weight it
    hides), the first on a tie.
    """
    named: dict[str, np.ndarray] = {}
    skipped = claimed_twice = 0
    for key, array in arrays.items():
        name = canonical_name(key)
        if name is None or array.dtype.kind not in "fV" or view_shape(tuple(array.shape)) is None:
            skipped += 1
            continue
        for part_name, part in _canonical_parts(key, name, array):
            if part_name in named:
                claimed_twice += 1
                if part.size <= named[part_name].size:
                    continue
            named[part_name] = part
    return named, skipped, claimed_twice


def fingerprint_tensors(
    arrays: Mapping[str, np.ndarray],
    key: FingerprintKey = PUBLIC_KEY,
    bases: Sequence[BaseModel] = (),
    *,
    require_base: bool = False,
    threads: int = DEFAULT_THREADS,
    peft: PeftScaling | None = None,
) -> Fingerprint:
    """Fingerprint the given tensors (all of a model, or any subset, e.g. a crawler's ranged reads).

    Adapter files (LoRA/LyCORIS keys) give a "lora" fingerprint of their ΔW (`peft`: the scaling
    of a PEFT adapter's adapter_config.json, see `lora.read_peft_scaling`). Checkpoints give a
    delta against the nearest of `bases` when one fits, else a raw fingerprint (base None) —
    or, with `require_base`, a FingerprintError saying why no base fits.
    """
    if is_adapter({name: array.nbytes for name, array in arrays.items()}):
        adapter = adapter_sketches(key, arrays, peft)
        if not adapter.sketches:
            raise FingerprintError("the adapter holds no LoRA/LyCORIS module with both factors")
        return new_fingerprint("lora", None, key, adapter.sketches, adapter.shapes, adapter.noise,
                               {"tensors_skipped": adapter.skipped, **adapter.notes})
    named, skipped, claimed_twice = _checkpoint_arrays(arrays)
    if not named:
        raise FingerprintError("the model holds no floating-point tensors to fingerprint")
    left_out = LeftOut()
    sketches = sketch_tensors(key, named.items(), threads=threads, left_out=left_out)
    if not sketches and left_out.all():
        raise left_out.error("tensor")
    shapes = {n: view_shape(tuple(named[n].shape)) or () for n in sketches}
    noise = {n: rounding_error(named[n].dtype) ** 2 * float(np.sum(s * s)) for n, s in sketches.items()}
    raw = new_fingerprint("checkpoint", None, key, sketches, shapes, noise, {
        "tensors_skipped": skipped, **left_out.notes(), **({"names_claimed_twice": claimed_twice} if claimed_twice else {})})
    fit = nearest_base(raw, bases)
    if fit is not None:
        return delta(raw, fit.base)
    if require_base:
        raise FingerprintError(f"no registered base fits this model: {explain_no_base(raw, bases)}")
    return raw


def fingerprint_model(
    reader: ModelReader,
    key: FingerprintKey = PUBLIC_KEY,
    bases: Sequence[BaseModel] = (),
    *,
    require_base: bool = False,
    threads: int = DEFAULT_THREADS,
) -> Fingerprint:
    """Fingerprint every float tensor of an open model (see `fingerprint_tensors`).

    A PEFT adapter's scale comes from the adapter_config.json beside it (or inside its folder)."""
    arrays = {info.name: reader.array(info.name) for info in reader.tensors()
              if _is_float(info.dtype) or split_adapter_key(info.name) is not None}
    if not arrays:
        raise FingerprintError(f"{reader.path}: the model holds no floating-point tensors to fingerprint")
    peft = read_peft_scaling(reader.path) if is_adapter({name: array.nbytes for name, array in arrays.items()}) else None
    return fingerprint_tensors(arrays, key, bases, require_base=require_base, threads=threads, peft=peft)


def select_tensors(infos: Sequence[TensorInfo], budget_fraction: float = 0.05) -> list[TensorInfo]:
    """The tensors a cheap partial fingerprint should fetch, in file-name order of selection.

    Always the INDEX_ROLES tensors (cross-attention key/value and text-encoder attention: about
    4.5 % of an SD 1.5 checkpoint), then further attention roles while the total stays within
    `budget_fraction` of the model's float bytes. Adapter files are small: all their tensors.
    Models with no recognised roles get an even spread of 2-D tensors within the budget.
    """
    if is_adapter({info.name: info.nbytes for info in infos}):
        return list(infos)
    # (canonical name, info, bytes), each size computed once: a crawl selects for every file it sees.
    named = sorted(
        ((name, info, info.nbytes) for info in infos if _is_float(info.dtype) and (name := canonical_name(info.name)) is not None),
        key=lambda triple: triple[0],
    )
    budget = budget_fraction * sum(size for _, _, size in named)
    chosen = [info for name, info, _ in named if role_of(name) in _FETCH_ROLES]
    used = sum(size for name, _, size in named if role_of(name) in _FETCH_ROLES)
    if chosen:
        for role in _EXTRA_ROLES:
            for name, info, size in named:
                if role_of(name) == role and used + size <= budget:
                    chosen.append(info)
                    used += size
        return chosen
    matrices = [(info, size) for _, info, size in named if len(info.shape) >= 2]
    for info, size in matrices[:: max(1, len(matrices) // 64)]:
        if used + size <= budget:
            chosen.append(info)
            used += size
    return chosen
