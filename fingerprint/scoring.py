"""Comparing two delta fingerprints: weighting → raw similarity → score, with breakdowns.

The pipeline has three explicit stages so a background cohort can slot in (issue "calibrate"):
1. `tensor_weights(fp)`: a fixed per-tensor weight, 1/√numel (so each tensor counts by its
   per-element change, not its size), capped so no tensor carries more than CAP × the median
   tensor energy (one retrained embedding must not decide a comparison).
2. `pair_statistics(query, listed)`: per shared tensor (same canonical name and view shape, and
   changed by the listed model beyond its rounding noise: an untouched VAE says nothing) the
   weighted dot product, energies and expected rounding-noise energies; the raw delta cosine
   and the least-squares coefficient of listed's delta inside query's follow from these sums.
   Rounding noise (a bf16 re-save, an fp16 file against an fp32 base) adds energy but no
   correlation, so the cosine's energies are debiased by the expected noise energy, never below
   NOISE_FLOOR of the measured energy (so a misjudged noise level can at most double a cosine,
   and a noisier copy never scores above the clean one).
3. `compare(...)`: the `Comparison` with its score. Without a cohort the score is the raw cosine
   clipped at 0 and `calibrated` is False.

Merge coefficients need the benign background out of the way: fine-tunes of one base share
directions (ρ ≈ 0.1–0.3), so the least-squares weight of listed's delta in α·L + (1−α)·M is
over-estimated by ≈ (1−α)·ρ when M shares them. `Background.from_cohort(members)` takes the
top principal directions of a cohort's sketches per tensor; `compare(..., background=...)`
projects them out of both deltas before the least squares (and reports the cosine of what is
left as `residual`).
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.fpformat import Fingerprint
from modelsieve.fingerprint.names import block_of, component_of

BACKGROUND_DIRECTIONS = 2  # per-tensor benign directions a Background keeps (calibration.DEFAULT_COMPONENTS for scores)

ENERGY_CAP = 16.0
NOISE_FLOOR = 0.25
CHANGED = 2.0  # a listed tensor counts when its delta energy exceeds CHANGED × its expected rounding noise
DEFAULT_THRESHOLD = 0.35  # raw delta cosine; see README "Fuzzy fingerprints" for how it was chosen
RESIDUAL_THRESHOLD = 0.2  # delta cosine with a cohort Background projected out (synthetic hard negatives ≤ 0.1)


@dataclass(frozen=True)
class _Prepared:
    """A fingerprint's sketches stacked for fast pairing (1-D sketches zero-padded to k²)."""

    rows: dict[str, int]
    matrix: np.ndarray  # (tensors × k²)
    energy: np.ndarray  # ‖sketch‖²
    noise: np.ndarray  # expected rounding-noise part of the energy
    weights: np.ndarray  # stage-1 tensor weights


_PREPARED: weakref.WeakKeyDictionary[Fingerprint, _Prepared] = weakref.WeakKeyDictionary()


def _prepare(fp: Fingerprint) -> _Prepared:
    prepared = _PREPARED.get(fp)
    if prepared is None:
        names = list(fp.sketches)
        width = max((fp.sketches[n].size for n in names), default=0)
        matrix = np.zeros((len(names), width))
        for row, name in enumerate(names):
            matrix[row, : fp.sketches[name].size] = fp.sketches[name].ravel()
        energy = np.einsum("ij,ij->i", matrix, matrix)
        noise = np.array([fp.noise[n] for n in names])
        sizes = np.array([math.prod(fp.shapes[n]) for n in names], dtype=np.float64)
        per_element = np.maximum(energy - noise, 0.0) / sizes
        positive = per_element[per_element > 0]
        cap = ENERGY_CAP * float(np.median(positive)) if positive.size else 0.0
        capped = np.where(per_element > cap, np.sqrt(cap / np.maximum(per_element, 1e-300)), 1.0)
        prepared = _Prepared({n: i for i, n in enumerate(names)}, matrix, energy, noise, capped / np.sqrt(sizes))
        _PREPARED[fp] = prepared
    return prepared


def tensor_weights(fp: Fingerprint) -> dict[str, float]:
    """Per-tensor weights (stage 1): 1/√numel, capped at ENERGY_CAP × the median energy."""
    prepared = _prepare(fp)
    return {n: float(prepared.weights[i]) for n, i in prepared.rows.items()}


@dataclass(frozen=True)
class PairStatistics:
    """Stage 2: weighted per-tensor dot products and energies over the shared tensors."""

    names: tuple[str, ...]
    dots: np.ndarray
    query_energy: np.ndarray
    query_noise: np.ndarray
    listed_energy: np.ndarray
    listed_noise: np.ndarray
    listed_total_energy: float

    @staticmethod
    def _signal(energy: np.ndarray, noise: np.ndarray) -> float:
        total = float(energy.sum())
        return max(total - float(noise.sum()), NOISE_FLOOR * total)

    def listed_signal(self, select: np.ndarray | slice = slice(None)) -> float:
        """Listed's weighted delta energy on the (selected) shared tensors, rounding noise removed."""
        return self._signal(self.listed_energy[select], self.listed_noise[select])

    def similarity(self, select: np.ndarray | slice = slice(None)) -> float:
        """The weighted, noise-debiased delta cosine over all (or the selected) shared tensors."""
        denominator = math.sqrt(self._signal(self.query_energy[select], self.query_noise[select]) * self.listed_signal(select))
        return max(-1.0, min(1.0, float(self.dots[select].sum()) / denominator)) if denominator > 0 else 0.0


def _check_comparable(query: Fingerprint, listed: Fingerprint) -> None:
    query.check_compatible(listed)
    for role, fp in (("query", query), ("listed", listed)):
        if not fp.is_delta:
            raise FingerprintError(
                f"the {role} fingerprint is a raw checkpoint sketch (no registered base fitted it); register its base "
                "with `modelsieve bases add` and fingerprint it again"
            )
    if query.base is not None and listed.base is not None and query.base != listed.base:
        raise FingerprintMismatchError(f"the fingerprints were taken against different bases ({query.base!r} vs {listed.base!r})")


@dataclass(frozen=True, eq=False)
class Background:
    """Benign directions per tensor: orthonormal rows in each tensor's sketch space, from a cohort.

    Built by `from_cohort` from delta fingerprints of benign models of one base (fine-tunes and
    LoRAs); holds no weights, only k sketch-sized directions per tensor.
    """

    key_id: str
    key_check: str
    scheme: int
    directions: Mapping[str, np.ndarray]  # canonical name → (k × sketch size), orthonormal rows

    @classmethod
    def from_cohort(cls, members: Sequence[Fingerprint], count: int = BACKGROUND_DIRECTIONS) -> Background:
        """The top `count` uncentred principal directions of the members' sketches, tensor by tensor.

        Each member's sketch is scaled to unit norm first (delta sizes span orders of magnitude;
        the largest tune must not pass its own direction off as the family's). A tensor gets
        directions only where more than `count` members changed it (fewer would mostly remove
        the members' own deltas)."""
        if not members:
            raise FingerprintError("a background needs at least one cohort member")
        for member in members:
            member.check_compatible(members[0])
            if not member.is_delta:
                raise FingerprintError("a background member must be a delta fingerprint: fingerprint it against its base")
        rows: dict[str, list[np.ndarray]] = defaultdict(list)
        for member in members:
            for name, sketch in member.sketches.items():
                size = float(np.linalg.norm(sketch))
                if size > 0:
                    rows[name].append(sketch.ravel() / size)
        directions = {}
        for name, stack in rows.items():
            if len(stack) <= count or len({r.size for r in stack}) != 1:
                continue
            _, values, vh = np.linalg.svd(np.stack(stack), full_matrices=False)
            keep = min(count, int(np.sum(values > 1e-9 * values[0])))
            if keep:
                directions[name] = vh[:keep]
        first = members[0]
        return cls(first.key_id, first.key_check, first.scheme, directions)

    def check_compatible(self, fp: Fingerprint) -> None:
        """Raise FingerprintMismatchError unless `fp` was taken with this background's key and scheme."""
        if (self.scheme, self.key_id, self.key_check) != (fp.scheme, fp.key_id, fp.key_check):
            raise FingerprintMismatchError(
                f"the background was taken with key {self.key_id}/{self.key_check} (scheme {self.scheme}), the fingerprint "
                f"with {fp.key_id}/{fp.key_check} (scheme {fp.scheme})"
            )


_PROJECTED: weakref.WeakKeyDictionary[Background, weakref.WeakKeyDictionary[Fingerprint, _Prepared]] = weakref.WeakKeyDictionary()


def _projected(fp: Fingerprint, background: Background) -> _Prepared:
    """`_prepare(fp)` with the background's directions projected out of every tensor's sketch.

    The expected rounding noise shrinks with the dimensions removed (rounding noise is isotropic)."""
    cache = _PROJECTED.setdefault(background, weakref.WeakKeyDictionary())
    prepared = cache.get(fp)
    if prepared is None:
        background.check_compatible(fp)
        raw = _prepare(fp)
        matrix, noise = raw.matrix.copy(), raw.noise.copy()
        for name, row in raw.rows.items():
            basis = background.directions.get(name)
            if basis is None or basis.shape[1] != fp.sketches[name].size:
                continue
            size = basis.shape[1]
            matrix[row, :size] -= (basis @ matrix[row, :size]) @ basis
            noise[row] *= 1.0 - basis.shape[0] / size
        prepared = _Prepared(raw.rows, matrix, np.einsum("ij,ij->i", matrix, matrix), noise, raw.weights)
        cache[fp] = prepared
    return prepared


def pair_statistics(query: Fingerprint, listed: Fingerprint, background: Background | None = None) -> PairStatistics:
    """Stage 2 for a query and a listed fingerprint, weighted by the listed one's tensor weights.

    With a `background`, its directions are first projected out of both deltas (the tensors
    compared and the coverage total stay those of the plain comparison)."""
    _check_comparable(query, listed)
    q, l = _prepare(query), _prepare(listed)
    changed = l.energy > CHANGED * l.noise
    pairs = [(name, q.rows[name], row) for name, row in l.rows.items()
             if changed[row] and name in q.rows and query.shapes[name] == listed.shapes[name]]
    names = tuple(p[0] for p in pairs)
    qi = np.array([p[1] for p in pairs], dtype=np.intp)
    li = np.array([p[2] for p in pairs], dtype=np.intp)
    total = float(np.sum((l.weights[changed] ** 2) * np.maximum(l.energy[changed] - l.noise[changed], 0.0)))
    if background is not None:
        q, l = _projected(query, background), _projected(listed, background)
    w2 = l.weights[li] ** 2
    width = min(q.matrix.shape[1], l.matrix.shape[1])
    dots = w2 * np.einsum("ij,ij->i", q.matrix[qi, :width], l.matrix[li, :width])
    return PairStatistics(names, dots, w2 * q.energy[qi], w2 * q.noise[qi], w2 * l.energy[li], w2 * l.noise[li], total)


@dataclass(frozen=True)
class GroupScore:
    """A component's or block's part of a comparison."""

    similarity: float  # delta cosine within the group
    share: float  # the group's share of the overall weighted dot product
    tensors: int


@dataclass(frozen=True)
class Comparison:
    """How much of a listed model's delta a query carries, with the evidence to show for it."""

    similarity: float  # raw weighted delta cosine over shared tensors, −1..1
    score: float  # the decision score: similarity (or, with a Background, residual) clipped at 0
    calibrated: bool  # False until a background cohort normalises scores
    coefficient: float  # least-squares weight of listed's delta in query's (merge α, LoRA strength, add-diff m)
    base: str | None
    tensors_compared: int
    coverage: float  # share of listed's weighted delta energy on the tensors compared
    components: Mapping[str, GroupScore] = field(default_factory=dict)
    blocks: Mapping[str, GroupScore] = field(default_factory=dict)
    residual: float | None = None  # delta cosine with a Background's directions projected out; None without one

    def is_match(self, threshold: float | None = None) -> bool:
        """score ≥ threshold (default: DEFAULT_THRESHOLD, or RESIDUAL_THRESHOLD for a background-removed score)."""
        if threshold is None:
            threshold = DEFAULT_THRESHOLD if self.residual is None else RESIDUAL_THRESHOLD
        return self.tensors_compared > 0 and self.score >= threshold

    def to_json(self) -> dict[str, Any]:
        group = lambda g: {"similarity": round(g.similarity, 4), "share": round(g.share, 4), "tensors": g.tensors}  # noqa: E731
        return {
            "similarity": round(self.similarity, 4), "score": round(self.score, 4), "calibrated": self.calibrated,
            "coefficient": round(self.coefficient, 4), "base": self.base, "tensors_compared": self.tensors_compared,
            "coverage": round(self.coverage, 4), "residual": None if self.residual is None else round(self.residual, 4),
            "components": {k: group(v) for k, v in self.components.items()},
            "blocks": {k: group(v) for k, v in self.blocks.items()},
        }


def _groups(stats: PairStatistics, key: Callable[[str], str]) -> dict[str, GroupScore]:
    members: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(stats.names):
        members[key(name)].append(index)
    total = float(stats.dots.sum())
    result = {}
    for group, indices in sorted(members.items()):
        select = np.zeros(len(stats.names), dtype=bool)
        select[indices] = True
        share = float(stats.dots[select].sum()) / total if total else 0.0
        result[group] = GroupScore(stats.similarity(select), share, len(indices))
    return result


def compare(
    query: Fingerprint,
    listed: Fingerprint,
    *,
    breakdown: bool = True,
    statistics: PairStatistics | None = None,
    background: Background | None = None,
) -> Comparison:
    """Compare a query's delta with a listed delta over the tensors both hold.

    Raises FingerprintMismatchError for other keys, schemes or bases, FingerprintError when
    either side is not a delta. No shared tensors gives similarity 0 with tensors_compared 0.
    breakdown=False leaves `components` and `blocks` empty (cheaper, for callers that score many
    candidates and report no breakdown); `statistics`: this pair's `pair_statistics`, when the
    caller already has them (e.g. for `calibration.calibrate`). `background`: benign directions
    of the base's cohort, projected out before the coefficient's least squares (removing the
    bias shared directions give it) and for the `residual` cosine, which is then the score.
    """
    stats = statistics if statistics is not None else pair_statistics(query, listed)
    fit = pair_statistics(query, listed, background) if background is not None else stats
    listed_energy = stats.listed_signal()
    fit_energy = fit.listed_signal() if background is not None else listed_energy
    similarity = stats.similarity()
    residual = fit.similarity() if background is not None else None
    return Comparison(
        similarity=similarity,
        score=max(0.0, similarity if residual is None else residual),
        calibrated=False,
        coefficient=float(fit.dots.sum()) / fit_energy if fit_energy > 0 else 0.0,
        base=listed.base or query.base,
        tensors_compared=len(stats.names),
        coverage=min(1.0, listed_energy / stats.listed_total_energy) if stats.listed_total_energy > 0 else 0.0,
        components=_groups(stats, component_of) if breakdown else {},
        blocks=_groups(stats, block_of) if breakdown else {},
        residual=residual,
    )
