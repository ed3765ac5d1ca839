"""Background cohorts: honest fuzzy scores on real fine-tunes (raw → normalised → false-match rate).

Real fine-tunes of one base share benign directions (the objective and similar data pull every
fine-tune the same way), so a raw delta cosine of 0.2–0.5 between two independent models is
normal and proves nothing. A cohort of known-benign models derived from the same base calibrates
each comparison in three steps:

1. **Project out** the cohort's top principal directions (uncentred, so the shared mean direction
   goes first) from both deltas and take the cosine of what is left (`residual`).
2. **Normalise** (as speaker verification does with impostor cohorts): z-score the residual
   against the query's residuals with every cohort member (`normalised`). Whatever was done to
   the query — an fp8 re-save, a DARE drop, a merge — adds noise or dilutes its delta and so
   shrinks all its cosines by one common factor, which this z-score cancels; `sides="both"`
   averages it with the listed model's z-score (symmetric s-norm), which on real fine-tunes
   separates transformed copies from siblings less well (README "Calibration").
3. **Estimate the false-match rate** at that score from a null distribution: the normalised
   scores of benign-vs-benign pairs inside the cohort, each computed by exactly the same
   procedure with the pair left out of the cohort; a Student-t tail fitted to them extrapolates
   (conservatively) beyond the few hundred pairs a cohort gives.

Everything runs on weighted per-tensor dot products: one Gram matrix of the cohort, the query
and the listed model over the tensors the comparison uses, so every leave-out projection costs
an n×n eigendecomposition, never another pass over the sketches. Tensors are weighted by
1/RMS of the cohort's change there (each counts by how unusual its change is), capped so no
tensor carries more than WEIGHT_CAP² × the median. Rounding noise (fp16/bf16/fp8 files) is taken
off the energies as `fuzzy.compare` does.

Without a cohort, or with fewer than MIN_COHORT members that touch the compared tensors, scores
still come out, flagged `calibrated=False`, with no normalised score and no false-match estimate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.fpformat import Fingerprint
from modelsieve.fingerprint.scoring import NOISE_FLOOR, Background, Comparison, PairStatistics, compare, pair_statistics

DEFAULT_COMPONENTS = 2  # principal benign directions projected out
NORMALISE_SIDES = ("query", "both")  # z-score against the query's cohort scores (default), or s-norm's both sides
MIN_COHORT = 6  # members touching the compared tensors needed before a score is called calibrated
MAX_NULL_PAIRS = 300  # benign pairs scored for a null distribution (a deterministic sample beyond)
SPREAD_FLOOR = 0.02  # lower bound on a cohort score spread, so near-zero spreads give finite z-scores
WEIGHT_CAP = 4.0  # no tensor's weight exceeds WEIGHT_CAP × the median tensor weight
DEFAULT_REVIEW_RATE = 1e-3
DEFAULT_ACTION_RATE = 1e-6


@dataclass(frozen=True)
class Policy:
    """When a fuzzy match deserves a human look (review) and when it is strong enough to act on.

    Calibrated matches qualify by their estimated false-match rate (≤ review_rate, ≤ action_rate).
    Uncalibrated ones (no cohort for their base) fall back to a raw-similarity threshold for review
    and reach action only if `uncalibrated_action` is set.
    """

    review_rate: float = DEFAULT_REVIEW_RATE
    action_rate: float = DEFAULT_ACTION_RATE
    uncalibrated_review: float = 0.35
    uncalibrated_action: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.action_rate <= self.review_rate < 1:
            raise FingerprintError("policy rates must satisfy 0 < action rate <= review rate < 1")
        if self.uncalibrated_action is not None and self.uncalibrated_action < self.uncalibrated_review:
            raise FingerprintError("the uncalibrated action threshold must not be below the review threshold")


@dataclass(frozen=True)
class CalibratedScore:
    """One comparison's evidence: raw similarity, normalised score and false-match estimate."""

    similarity: float  # raw weighted delta cosine (fuzzy.compare)
    calibrated: bool
    residual: float | None = None  # cosine after projecting out the cohort's benign directions
    normalised: float | None = None  # the residual z-scored against the cohort (fingerprint/calibration.py step 2)
    false_match_rate: float | None = None  # estimated P(a benign pair scores at least this)
    cohort_size: int = 0

    @property
    def false_match_text(self) -> str:
        """The estimate as people read it, e.g. '≤ 1 in 10^5'; 'uncalibrated' without a cohort."""
        if self.false_match_rate is None:
            return "uncalibrated"
        exponent = math.floor(-math.log10(max(self.false_match_rate, 1e-300)))
        return f"≤ 1 in 10^{exponent}" if exponent > 0 else "≈ 1 in 1"

    def decision(self, policy: Policy = Policy()) -> str | None:
        """'action', 'review' or None under `policy`."""
        if self.false_match_rate is not None:
            if self.false_match_rate <= policy.action_rate:
                return "action"
            return "review" if self.false_match_rate <= policy.review_rate else None
        if policy.uncalibrated_action is not None and self.similarity >= policy.uncalibrated_action:
            return "action"
        return "review" if self.similarity >= policy.uncalibrated_review else None

    def to_json(self) -> dict[str, Any]:
        rounded = lambda v: None if v is None else round(v, 4)  # noqa: E731
        rate = None if self.false_match_rate is None else float(f"{self.false_match_rate:.3g}")
        return {"similarity": rounded(self.similarity), "calibrated": self.calibrated, "residual": rounded(self.residual),
                "normalised": rounded(self.normalised), "false_match_rate": rate, "false_match": self.false_match_text,
                "cohort_size": self.cohort_size}


Layout = tuple[tuple[str, int], ...]  # (tensor name, sketch size) in comparison order


def _vectors(fps: Sequence[Fingerprint], layout: Layout, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weighted sketch rows over `layout`, zeros where a fingerprint lacks a tensor; their noise energies)."""
    rows = np.zeros((len(fps), sum(size for _, size in layout)))
    noise = np.zeros(len(fps))
    for i, fp in enumerate(fps):
        offset = 0
        for (name, size), weight in zip(layout, weights, strict=True):
            if name in fp.sketches:
                rows[i, offset : offset + size] = weight * fp.sketches[name].ravel()
                noise[i] += weight**2 * fp.noise[name]
            offset += size
    return rows, noise


def _layout(listed: Fingerprint, names: Sequence[str]) -> Layout:
    return tuple((n, listed.sketches[n].size) for n in names)


def _gram(rows: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Inner products with rounding noise taken off each self-energy (never below NOISE_FLOOR of it)."""
    gram = rows @ rows.T
    diagonal = np.diag(gram)
    np.fill_diagonal(gram, np.maximum(diagonal - noise, NOISE_FLOOR * diagonal))
    return gram


def _residual_cosine(gram: np.ndarray, cohort: Sequence[int], i: int, j: int, components: int) -> float:
    """Cosine of vectors i and j after projecting out the top principal directions of `cohort`."""
    a_i = a_j = np.zeros(0)
    if components > 0 and cohort:
        values, vectors = np.linalg.eigh(gram[np.ix_(cohort, cohort)])
        top = np.argsort(values)[::-1][:components]
        top = top[values[top] > 1e-12 * max(float(values.max()), 1e-300)]
        basis = vectors[:, top] / np.sqrt(values[top])
        a_i, a_j = basis.T @ gram[cohort, i], basis.T @ gram[cohort, j]
    energies = (gram[i, i] - a_i @ a_i) * (gram[j, j] - a_j @ a_j)
    return float((gram[i, j] - a_i @ a_j) / math.sqrt(energies)) if energies > 0 else 0.0


def _normalised(gram: np.ndarray, cohort: Sequence[int], i: int, j: int, components: int, sides: str) -> tuple[float, float]:
    """(residual cosine of query i and listed j, its z-score against the query's residuals with every
    cohort member — averaged with the listed one's when `sides` is "both", as s-norm does)."""
    residual = _residual_cosine(gram, cohort, i, j, components)
    z = []
    for side in (i, j) if sides == "both" else (i,):
        scores = np.array([_residual_cosine(gram, [k for k in cohort if k != m], side, m, components) for m in cohort])
        z.append((residual - scores.mean()) / max(float(scores.std(ddof=1)), SPREAD_FLOOR))
    return residual, float(np.mean(z))


@dataclass(frozen=True)
class NullDistribution:
    """Normalised scores of benign pairs, and the Student-t tail fitted to them."""

    scores: np.ndarray
    cohort_size: int
    components: int = DEFAULT_COMPONENTS

    @property
    def degrees_of_freedom(self) -> int:
        """n − 1 − components for a cohort of n: the pairs share members, so the centre and spread
        carry the information of about n independent draws (a U-statistic's first-order term has
        n − 1 degrees of freedom), and each principal direction fitted on the same cohort and
        projected out takes one more — the predictive Student-t of a score from n draws."""
        return max(1, self.cohort_size - 1 - self.components)

    @property
    def _fit(self) -> tuple[float, float, int]:
        centre = float(np.mean(self.scores))
        spread = max(float(np.std(self.scores, ddof=1)), 1e-6) if len(self.scores) > 1 else 1.0
        return centre, spread, self.degrees_of_freedom

    def false_match_rate(self, normalised: float) -> float:
        """P(a benign pair's normalised score ≥ `normalised`); decreasing in `normalised`."""
        from scipy.special import stdtr  # imported when a cohort is used: scipy costs every command 0.3 s+

        centre, spread, df = self._fit
        return float(stdtr(df, -(normalised - centre) / spread))  # the Student-t upper tail

    def threshold(self, rate: float) -> float:
        """The normalised score whose estimated false-match rate is `rate` (the inverse)."""
        from scipy.special import stdtrit

        centre, spread, df = self._fit
        return centre + spread * -float(stdtrit(df, rate))  # the Student-t inverse upper tail


class Cohort:
    """Known-benign models derived from one base, and the calibration they give.

    `members` are delta fingerprints (checkpoints taken against `base`, or LoRAs for it) sharing
    one key and scheme. Null distributions are computed per set of compared tensors and cached.
    """

    def __init__(
        self, base: str, members: Sequence[Fingerprint], components: int = DEFAULT_COMPONENTS, sides: str = "query"
    ) -> None:
        if sides not in NORMALISE_SIDES:
            raise FingerprintError(f"normalise against {' or '.join(NORMALISE_SIDES)}, not {sides!r}")
        for member in members:
            member.check_compatible(members[0])
            if not member.is_delta:
                raise FingerprintError("a background model must be a delta fingerprint: fingerprint it against its base")
            if member.base is not None and member.base != base:
                raise FingerprintMismatchError(f"a background model was taken against base {member.base!r}, not {base!r}")
        self.base = base
        self.members = tuple(members)
        self.components = components
        self.sides = sides

    def __len__(self) -> int:
        return len(self.members)

    @functools.cached_property
    def background(self) -> Background | None:
        """The members' shared benign directions per tensor (unbiased merge coefficients); None when empty."""
        return Background.from_cohort(self.members) if self.members else None

    def covering(self, names: Iterable[str]) -> int:
        """How many members touch at least one of the tensors `names`."""
        wanted = set(names)
        return sum(bool(wanted & set(m.sketches)) for m in self.members)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - a cohort lives as long as the matcher holding it
    def _table(self, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray, NullDistribution]:
        """(tensor weights, weighted member rows, member noise, null distribution) over `layout`."""
        touching = [m for m in self.members if any(n in m.sketches for n, _ in layout)]
        energy = np.array([np.mean([max(float(np.sum(m.sketches[n] ** 2)) - m.noise[n], 0.0) if n in m.sketches else 0.0
                                    for m in touching]) for n, _ in layout])
        positive = energy[energy > 0]
        floor = float(np.median(positive)) / WEIGHT_CAP**2 if positive.size else 1.0
        weights = 1.0 / np.sqrt(np.maximum(energy, floor))
        rows, noise = _vectors(touching, layout, weights)
        gram = _gram(rows, noise)
        n = len(rows)
        pairs = list(combinations(range(n), 2))
        if len(pairs) > MAX_NULL_PAIRS:
            pairs = [pairs[i] for i in sorted(np.random.default_rng(0).choice(len(pairs), MAX_NULL_PAIRS, replace=False))]
        null = [_normalised(gram, [k for k in range(n) if k not in (i, j)], i, j, self.components, self.sides)[1] for i, j in pairs]
        return weights, rows, noise, NullDistribution(np.array(null), n, self.components)

    def null(self, listed: Fingerprint, names: Sequence[str]) -> NullDistribution:
        """The null distribution of normalised scores over the tensors `names` of `listed`."""
        return self._table(_layout(listed, names))[3]

    def score(self, query: Fingerprint, listed: Fingerprint, names: Sequence[str], similarity: float) -> CalibratedScore:
        """Calibrate one comparison over the tensors `names` (those `fuzzy.compare` used)."""
        usable = self.covering(names)
        if usable < MIN_COHORT or not names:
            return CalibratedScore(similarity, calibrated=False, cohort_size=usable)
        query.check_compatible(self.members[0])
        layout = _layout(listed, names)
        weights, rows, noise, null = self._table(layout)
        pair_rows, pair_noise = _vectors([query, listed], layout, weights)
        gram = _gram(np.vstack([rows, pair_rows]), np.concatenate([noise, pair_noise]))
        n = len(rows)
        residual, normalised = _normalised(gram, list(range(n)), n, n + 1, self.components, self.sides)
        return CalibratedScore(similarity, True, residual, normalised, null.false_match_rate(normalised), n)


def cohort_for(query: Fingerprint, listed: Fingerprint, cohorts: Mapping[str, Cohort]) -> Cohort | None:
    """The cohort of the comparison's base; for LoRA-vs-LoRA (no base), the one covering most tensors."""
    base = listed.base or query.base
    if base is not None:
        return cohorts.get(base)
    names = set(listed.sketches) & set(query.sketches)
    best = max(cohorts.values(), key=lambda c: c.covering(names), default=None)
    return best if best is not None and best.covering(names) > 0 else None


def calibrate(
    query: Fingerprint,
    listed: Fingerprint,
    cohorts: Mapping[str, Cohort] = {},  # noqa: B006
    *,
    statistics: PairStatistics | None = None,
) -> CalibratedScore:
    """Compare `query` with `listed` (as `fuzzy.compare` does) and calibrate against their base's cohort.

    `statistics`: this pair's `pair_statistics`, when the caller has them already."""
    if statistics is None:
        statistics = pair_statistics(query, listed)
    similarity = statistics.similarity()
    cohort = cohort_for(query, listed, cohorts)
    if cohort is None:
        return CalibratedScore(similarity, calibrated=False)
    return cohort.score(query, listed, statistics.names, similarity)


def assess(
    query: Fingerprint,
    listed: Fingerprint,
    cohorts: Mapping[str, Cohort] = {},  # noqa: B006
    *,
    breakdown: bool = True,
) -> tuple[Comparison, CalibratedScore]:
    """`compare` and `calibrate` in one pass, using the base's cohort for both.

    With a cohort, its benign directions are projected out before the merge coefficient's fit (a
    merge partner sharing the family's direction otherwise inflates it) and the comparison's score
    is the residual cosine; without one this is plain `compare` plus an uncalibrated score."""
    statistics = pair_statistics(query, listed)
    cohort = cohort_for(query, listed, cohorts)
    background = cohort.background if cohort is not None else None
    comparison = compare(query, listed, breakdown=breakdown, statistics=statistics, background=background)
    return comparison, calibrate(query, listed, cohorts, statistics=statistics)
