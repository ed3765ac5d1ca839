"""Bases and deltas: find the registered base a checkpoint derives from, and subtract it.

Because the sketch is linear, S(model) − S(base) is the sketch of the fine-tune's delta. The
nearest base is the one whose raw sketches are closest relative to their own size; tensors whose
names no layout explains are given the name of the base tensor with the same shape and the
nearest sketch (a weight moves far less in fine-tuning than it differs from any other weight).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.fpformat import Fingerprint

MAX_BASE_DISTANCE = 0.5  # ‖S(model) − S(base)‖ / ‖S(base)‖ on shared tensors; fine-tunes sit near 0.001–0.1
MIN_BASE_COVERAGE = 0.5  # share of the model's tensors the base must hold
# At most this far from a base (the same relative distance) a checkpoint is that base again: an fp16
# re-save measures ~2e-4, the smallest fine-tunes (0.1 % of the weights) ~1e-3.
SAME_BASE_DISTANCE = 5e-4


@dataclass(frozen=True, eq=False)
class BaseModel:
    """A registered base: its name and its raw (non-delta) checkpoint fingerprint."""

    name: str
    fingerprint: Fingerprint

    def __post_init__(self) -> None:
        if self.fingerprint.is_delta:
            raise FingerprintError(f"base {self.name!r}: a base needs a raw checkpoint fingerprint, not a delta")


@dataclass(frozen=True)
class BaseFit:
    """How well a base explains a model: relative distance on the tensors both hold."""

    base: BaseModel
    distance: float
    shared: int
    coverage: float


def _resolve_unknown(raw: Fingerprint, base: Fingerprint) -> Fingerprint:
    """Rename `other.*` tensors to the base tensor of the same shape with the nearest sketch."""
    unknown = [n for n in raw.sketches if n.startswith("other.") and n not in base.sketches]
    if not unknown:
        return raw
    taken = set(raw.sketches)
    renamed = {n: n for n in raw.sketches}
    for name in unknown:
        candidates = [b for b in base.sketches if base.shapes[b] == raw.shapes[name] and b not in taken]
        if not candidates:
            continue
        distances = [np.linalg.norm(raw.sketches[name] - base.sketches[b]) / max(float(np.linalg.norm(base.sketches[b])), 1e-30)
                     for b in candidates]
        best = int(np.argmin(distances))
        if distances[best] < MAX_BASE_DISTANCE:
            renamed[name] = candidates[best]
            taken.add(candidates[best])
    sketches = {renamed[n]: s for n, s in raw.sketches.items()}
    shapes = {renamed[n]: s for n, s in raw.shapes.items()}
    noise = {renamed[n]: s for n, s in raw.noise.items()}
    return Fingerprint(raw.kind, raw.base, raw.key_id, raw.key_check, sketches, shapes, noise, raw.scheme, raw.source)


def _shared(raw: Fingerprint, base: Fingerprint) -> list[str]:
    return [n for n in raw.sketches if n in base.sketches and raw.shapes[n] == base.shapes[n]]


def fit_base(raw: Fingerprint, base: BaseModel) -> BaseFit:
    """The relative distance between a raw fingerprint and a base on their shared tensors."""
    raw.check_compatible(base.fingerprint)
    resolved = _resolve_unknown(raw, base.fingerprint)
    shared = _shared(resolved, base.fingerprint)
    if not shared:
        return BaseFit(base, float("inf"), 0, 0.0)
    difference = sum(float(np.sum((resolved.sketches[n] - base.fingerprint.sketches[n]) ** 2)) for n in shared)
    size = sum(float(np.sum(base.fingerprint.sketches[n] ** 2)) for n in shared)
    return BaseFit(base, (difference / max(size, 1e-300)) ** 0.5, len(shared), len(shared) / len(resolved.sketches))


def nearest_base(raw: Fingerprint, bases: Iterable[BaseModel]) -> BaseFit | None:
    """The closest base within MAX_BASE_DISTANCE and MIN_BASE_COVERAGE, or None."""
    fits = [f for f in (fit_base(raw, b) for b in bases) if f.distance <= MAX_BASE_DISTANCE and f.coverage >= MIN_BASE_COVERAGE]
    return min(fits, key=lambda f: f.distance, default=None)


def explain_no_base(raw: Fingerprint, bases: Sequence[BaseModel]) -> str:
    """Why no base fits, for an error message."""
    fits = [fit_base(raw, b) for b in bases]
    if not fits:
        return "no base is registered"
    if all(f.shared == 0 for f in fits):
        return f"it shares no tensor names and shapes with {', '.join(repr(b.name) for b in bases)} (another architecture?)"
    best = min(fits, key=lambda f: f.distance)
    return (f"the nearest base {best.base.name!r} is at relative distance {best.distance:.2f} over {best.shared} "
            f"tensors ({best.coverage:.0%} of the model); the limits are {MAX_BASE_DISTANCE} and {MIN_BASE_COVERAGE:.0%}")


def change_from_base(delta_sketches: Mapping[str, np.ndarray], base: BaseModel) -> float:
    """How far a delta moved from its base: ‖Δ‖ / ‖S(base)‖ over the tensors both hold (the relative
    distance `nearest_base` fits bases by, and SAME_BASE_DISTANCE bounds)."""
    names = [n for n in delta_sketches if n in base.fingerprint.sketches]
    change = sum(float(np.sum(np.square(delta_sketches[n]))) for n in names)
    size = sum(float(np.sum(np.square(base.fingerprint.sketches[n]))) for n in names)
    return (change / max(size, 1e-300)) ** 0.5


def delta(raw: Fingerprint, base: BaseModel) -> Fingerprint:
    """The delta fingerprint S(model) − S(base) over the tensors both hold."""
    raw.check_compatible(base.fingerprint)
    if raw.is_delta:
        raise FingerprintError("the fingerprint is already a delta")
    resolved = _resolve_unknown(raw, base.fingerprint)
    shared = _shared(resolved, base.fingerprint)
    if not shared:
        raise FingerprintError(f"the model shares no tensors with base {base.name!r}")
    sketches = {n: resolved.sketches[n] - base.fingerprint.sketches[n] for n in shared}
    source = {**resolved.source, "base_distance": round(change_from_base(sketches, base), 6),
              "tensors_not_in_base": len(resolved.sketches) - len(shared)}
    # a tensor identical to the base's carries no rounding noise in its delta
    noise = {n: resolved.noise[n] if np.any(sketches[n]) else 0.0 for n in shared}
    return Fingerprint("checkpoint", base.name, raw.key_id, raw.key_check, sketches,
                       {n: resolved.shapes[n] for n in shared}, noise, raw.scheme, source)
