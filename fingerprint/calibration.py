"""Background cohorts: honest fuzzy scores on real fine-tunes (raw → normalised → false-match rate).

Real fine-tunes of one base share benign directions (the objective and similar data pull every
fine-tune the same way), so a raw delta cosine of 0.2–0.5 between two independent models is
normal and proves nothing. A cohort of known-benign models derived from the same base calibrates
each comparison in three steps:

1. **Project out**, tensor by tensor, the cohort's top principal directions there (uncentred,
   of the members' sketches scaled to unit norm, as `scoring.Background` does; the query and
   the listed model are never in it) from both deltas and take the weighted cosine of what is
   left (`residual`). Benign directions differ from tensor to tensor; a few directions of the
   whole delta cannot hold them all.
2. **Normalise** (as speaker verification does with impostor cohorts): z-score the residual
   against the query's residuals with every cohort member, each with that member left out of the
   background so its own direction is not removed (`normalised`). Whatever was done to the query
   — an fp8 re-save, a DARE drop, a merge — adds noise or dilutes its delta and so shrinks all its
   cosines by one common factor, which this z-score cancels; `sides="both"` averages it with the
   listed model's z-score (symmetric s-norm), which on real fine-tunes separates transformed
   copies from siblings less well (README "Calibration").
3. **Estimate the false-match rate** at that score from a null distribution: the normalised
   scores of benign-vs-benign pairs inside the cohort — each member with its NULL_NEIGHBOURS
   nearest members, the benign models most like it, as a listed model's siblings are like it —
   each computed by exactly the same procedure with the pair left out of the background
   (leave-two-out); a Student-t whose scale also fits the null's own top scores extrapolates
   beyond the 4n pairs a cohort of n gives. The rate is therefore that of a benign model trained
   on similar data, conservative for unrelated models; it is never below the rate the same fit
   gives over all n(n − 1) pairs (`CohortNull`), which a narrower nearest-pairs fit can be far
   out in the tail of a cohort without close pairs.

Everything runs on per-tensor Gram matrices of the members' unit sketches, so every leave-out
projection is a batched n×n eigenproblem, never another pass over the sketches. Tensors are
weighted by 1/RMS per sketch element of the cohort's change there: each tensor's change counts
by how unusual it is, and every sketch dimension is one unit of evidence, so a 12-element bias
sketch does not weigh as much as a 144-element matrix sketch. Weights are capped so no tensor
carries more than WEIGHT_CAP² × the median. Rounding noise (fp16/bf16/fp8 files) is taken off
the energies as `fuzzy.compare` does, and a comparison whose sides carry rounding noise weights
each tensor down by the share of noise in it (`_TensorSpace.noise_weights2`): where an fp8 file's
rounding noise swamps the change a fine-tune makes, that tensor says little.

Without a cohort, or with fewer than MIN_COHORT members that touch the compared tensors, scores
still come out, flagged `calibrated=False`, with no normalised score and no false-match estimate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.fpformat import Fingerprint
from modelsieve.fingerprint.scoring import CHANGED, NOISE_FLOOR, Background, Comparison, PairStatistics, compare, pair_statistics

DEFAULT_COMPONENTS = 3  # principal benign directions projected out of each tensor (README "Calibration": 3 beat 2 on real fine-tunes)
NORMALISE_SIDES = ("query", "both")  # z-score against the query's cohort scores (default), or s-norm's both sides
RITZ_EXTRA = 6  # leading directions beyond `components` a leave-out eigenproblem is solved in (Cohort._table)
MIN_COHORT = 6  # members touching the compared tensors needed before a score is called calibrated
TAIL_FRACTION = 0.025  # the top share of the null the Student-t's scale must also fit (at least MIN_TAIL scores)
MIN_TAIL = 5
NULL_NEIGHBOURS = 4  # null pairs per member: it and its nearest cohort members (README "Calibration", step 4)
SPREAD_FLOOR = 0.02  # lower bound on a cohort score spread, so near-zero spreads give finite z-scores
WEIGHT_CAP = 4.0  # no tensor's weight exceeds WEIGHT_CAP × the median tensor weight
DEFAULT_REVIEW_RATE = 1e-3
DEFAULT_ACTION_RATE = 1e-6


@dataclass(frozen=True)
class Policy:
    """When a fuzzy match deserves a human look (review) and when it is strong enough to act on.

    Calibrated matches qualify by their estimated false-match rate (≤ review_rate, ≤ action_rate).
    Uncalibrated ones (no cohort for their base) fall back to a raw-similarity threshold for review
    and reach action only if `uncalibrated_action` is set. The raw threshold holds for comparisons
    over many tensors; over fewer than `uncalibrated_min_tensors` chance similarity spreads wider
    (benign one-module LoRAs reach 0.6 against a listed LoRA on the same module), so review then
    needs `uncalibrated_few_tensors_review`.
    """

    review_rate: float = DEFAULT_REVIEW_RATE
    action_rate: float = DEFAULT_ACTION_RATE
    uncalibrated_review: float = 0.35
    uncalibrated_action: float | None = None
    uncalibrated_min_tensors: int = 8
    uncalibrated_few_tensors_review: float = 0.9

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
    tensors: int = 0  # tensors compared

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
        review = policy.uncalibrated_review
        if self.tensors < policy.uncalibrated_min_tensors:
            review = max(review, policy.uncalibrated_few_tensors_review)
        if policy.uncalibrated_action is not None and self.similarity >= max(policy.uncalibrated_action, review):
            return "action"
        return "review" if self.similarity >= review else None

    def to_json(self) -> dict[str, Any]:
        rounded = lambda v: None if v is None else round(v, 4)  # noqa: E731
        rate = None if self.false_match_rate is None else float(f"{self.false_match_rate:.3g}")
        return {"similarity": rounded(self.similarity), "calibrated": self.calibrated, "residual": rounded(self.residual),
                "normalised": rounded(self.normalised), "false_match_rate": rate, "false_match": self.false_match_text,
                "cohort_size": self.cohort_size, "tensors": self.tensors}


Layout = tuple[tuple[str, int], ...]  # (tensor name, sketch size) in comparison order


def _layout(listed: Fingerprint, names: Sequence[str]) -> Layout:
    return tuple((n, listed.sketches[n].size) for n in names)


@dataclass(frozen=True)
class _Side:
    """One vector's per-tensor view against the cohort: member dot products, energy, rounding noise."""

    dots: np.ndarray  # (tensors × members): unit-normalised member sketch · this sketch
    energy: np.ndarray  # (tensors,) ‖sketch‖²
    noise: np.ndarray  # (tensors,) expected rounding-noise energy


def _top_directions(
    gram: np.ndarray, leading: np.ndarray, present: np.ndarray, keeps: np.ndarray, components: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `keeps` (masks over the members, all keeping the same number), the top
    `components` eigenvectors of the kept members' Gram matrix as (coefficients (masks × members ×
    components) mapping member dot products onto those directions, directions kept per mask).
    A direction is kept where more members than `components` changed the tensor (`present`)."""
    index = np.array([np.flatnonzero(k) for k in keeps]).reshape(len(keeps), -1)
    size = index.shape[1]
    coefficients = np.zeros((*keeps.shape, components))
    count = min(components, size)
    if count == 0:
        return coefficients, np.zeros(len(keeps))
    sub = gram[index[:, :, None], index[:, None, :]]
    if components + RITZ_EXTRA < size < gram.shape[0]:
        # Rayleigh-Ritz in the span of the whole cohort's leading eigenvectors: leaving a member or two
        # out moves the top directions only within it, at a fraction of a full eigh's cost
        span, _ = np.linalg.qr(leading[index, : components + RITZ_EXTRA])
        values, small = np.linalg.eigh(np.swapaxes(span, 1, 2) @ sub @ span)
        values, vectors = values[:, ::-1][:, :count], span @ small[:, :, ::-1][:, :, :count]
    else:
        values, vectors = np.linalg.eigh(sub)
        values, vectors = values[:, ::-1][:, :count], vectors[:, :, ::-1][:, :, :count]
    enough = present[index].sum(axis=1) > components
    valid = (values > 1e-12 * np.maximum(values[:, :1], 1e-300)) & enough[:, None]
    scaled = np.where(valid[:, None, :], vectors / np.sqrt(np.maximum(values, 1e-300))[:, None, :], 0.0)
    coefficients[np.arange(len(keeps))[:, None], index, :count] = scaled
    return coefficients, valid.sum(axis=1)


@dataclass(frozen=True)
class _TensorView:
    """One tensor of the cohort, with every background the calibration needs there.

    As `scoring.Background`: the top uncentred principal directions of the members' sketches
    scaled to unit norm; computed on the members' Gram matrix, so leaving members out costs an
    n×n eigenproblem, never another pass over the sketches. Independent of which other tensors a
    comparison uses, so it is computed once per cohort and tensor."""

    units: np.ndarray  # (members × sketch size): unit-normalised sketches, zero rows where absent
    gram: np.ndarray  # (members × members) of the unit sketches
    norms: np.ndarray  # (members,) sketch norms
    noise: np.ndarray  # (members,)
    size: int
    bases: np.ndarray  # (1 + members) × members × components: the whole cohort's, then each member left out
    kept: np.ndarray  # (1 + members,) directions those bases hold
    pair_dot: np.ndarray  # (members × members) dot product of members a and b, both left out of the background
    pair_energy: np.ndarray  # [a, b]: a's energy with a and b left out of the background
    pair_kept: np.ndarray  # (members × members) directions that background holds

    @classmethod
    def build(cls, members: Sequence[Fingerprint], name: str, size: int, components: int) -> _TensorView:
        rows, noise = np.zeros((len(members), size)), np.zeros(len(members))
        for m, member in enumerate(members):
            if name in member.sketches and member.sketches[name].size == size:
                rows[m], noise[m] = member.sketches[name].ravel(), member.noise[name]
        norms = np.linalg.norm(rows, axis=1)
        units = rows / np.maximum(norms, 1e-300)[:, None]
        gram = units @ units.T
        leading = np.linalg.eigh(gram)[1][:, ::-1]
        present = norms > 0
        n = len(members)
        bases, kept = _top_directions(gram, leading, present, ~np.eye(n, dtype=bool), components)
        whole, whole_kept = _top_directions(gram, leading, present, np.ones((1, n), dtype=bool), components)
        a, b = np.triu_indices(n, 1)
        pair_masks = np.ones((len(a), n), dtype=bool)
        pair_masks[np.arange(len(a)), a] = pair_masks[np.arange(len(a)), b] = False
        pair_bases, pair_kept = _top_directions(gram, leading, present, pair_masks, components)
        member_dots = norms[:, None] * gram  # [a, m]: member a · unit sketch of m
        alpha_a = np.einsum("pmk,pm->pk", pair_bases, member_dots[a])
        alpha_b = np.einsum("pmk,pm->pk", pair_bases, member_dots[b])
        dots, energy, kept_matrix = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
        dots[a, b] = dots[b, a] = norms[a] * norms[b] * gram[a, b] - np.einsum("pk,pk->p", alpha_a, alpha_b)
        energy[a, b] = norms[a] ** 2 - np.einsum("pk,pk->p", alpha_a, alpha_a)
        energy[b, a] = norms[b] ** 2 - np.einsum("pk,pk->p", alpha_b, alpha_b)
        kept_matrix[a, b] = kept_matrix[b, a] = pair_kept
        return cls(units, gram, norms, noise, size, np.concatenate([whole, bases]), np.concatenate([whole_kept, kept]),
                   dots, energy, kept_matrix)


@dataclass(frozen=True)
class _TensorSpace:
    """The cohort over one comparison's tensors: the tensor views stacked, with their weights."""

    views: tuple[_TensorView, ...]
    weights2: np.ndarray  # (tensors,) squared tensor weights
    typical: np.ndarray  # (tensors,) the touching members' mean change energy (rounding noise removed), floored > 0
    members: np.ndarray  # indices of the members touching these tensors

    @functools.cached_property
    def bases(self) -> np.ndarray:
        return np.stack([v.bases for v in self.views], axis=1)  # (1 + members) × tensors × members × components

    @functools.cached_property
    def kept(self) -> np.ndarray:
        return np.stack([v.kept for v in self.views], axis=1)  # (1 + members) × tensors

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        return np.array([v.size for v in self.views], dtype=float)

    def side(self, fp: Fingerprint, layout: Layout) -> _Side:
        """`fp`'s view (zeros where it lacks a tensor)."""
        dots = np.zeros((len(layout), len(self.views[0].norms) if self.views else 0))
        energy, noise = np.zeros(len(layout)), np.zeros(len(layout))
        for t, ((name, size), view) in enumerate(zip(layout, self.views, strict=True)):
            if name in fp.sketches and fp.sketches[name].size == size:
                sketch = fp.sketches[name].ravel()
                dots[t], energy[t], noise[t] = view.units @ sketch, sketch @ sketch, fp.noise[name]
        return _Side(dots, energy, noise)

    @functools.cached_property
    def _member_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """For the touching members, each with its own background (that member left out): those
        bases (members × tensors × members × components), each member's coefficients on them
        (members × tensors × components), projected energy, noise and norms (tensors × members)."""
        bases = self.bases[1:] if len(self.members) == len(self.bases) - 1 else self.bases[1 + self.members]
        dots = np.stack([v.norms[self.members, None] * v.gram[self.members] for v in self.views], axis=1)
        alpha = np.einsum("mtnk,mtn->mtk", bases, dots)
        norms = np.stack([v.norms[self.members] for v in self.views])
        energy = norms**2 - np.einsum("mtk,mtk->tm", alpha, alpha)
        return bases, alpha, energy, np.stack([v.noise[self.members] for v in self.views]), norms

    def noise_weights2(self, x: _Side, y: _Side) -> np.ndarray:
        """The squared tensor weights for comparing x with y: each scaled by S / (S + N), S the
        cohort's typical change energy there and N the rounding noise x and y carry (so 1 where
        neither carries any). A Wiener-style down-weighting: a tensor whose noise swamps the change
        a fine-tune makes (an fp8 re-save of a small fine-tune) says little about either. The null
        keeps the cohort's own weights: members are the reference, their rounding noise (usually
        small) is debiased but does not move their weights."""
        noise = x.noise + y.noise
        return self.weights2 * np.where(noise > 0, self.typical / np.maximum(self.typical + noise, 1e-300), 1.0)

    def cohort_residuals(self, x: _Side, weights2: np.ndarray) -> np.ndarray:
        """x's residual cosine with every touching member, each with that member left out of the background."""
        bases, alpha, energy, noise, norms = self._member_parts
        a_x = np.einsum("mtnk,tn->mtk", bases, x.dots)
        dot = norms * x.dots[:, self.members] - np.einsum("mtk,mtk->tm", a_x, alpha)
        energy_x = x.energy[:, None] - np.einsum("mtk,mtk->tm", a_x, a_x)
        return self._cosine(weights2, dot, energy_x, energy, x.noise[:, None], noise, self.kept[1 + self.members].T)

    def residual(self, x: _Side, y: _Side, cross: np.ndarray, weights2: np.ndarray) -> float:
        """The weighted cosine of x and y with the whole cohort's directions projected out of each tensor."""
        coefficients, kept = self.bases[0], self.kept[0]
        a_x, a_y = np.einsum("tmk,tm->tk", coefficients, x.dots), np.einsum("tmk,tm->tk", coefficients, y.dots)
        return float(self._cosine(weights2, cross - np.einsum("tk,tk->t", a_x, a_y), x.energy - np.einsum("tk,tk->t", a_x, a_x),
                                  y.energy - np.einsum("tk,tk->t", a_y, a_y), x.noise, y.noise, kept))

    def _cosine(self, weights2: np.ndarray, dot: np.ndarray, energy_x: np.ndarray, energy_y: np.ndarray,
                noise_x: np.ndarray, noise_y: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """Weighted, noise-debiased cosine from per-tensor projected dot products and energies
        (tensors on axis 0, further axes broadcast); rounding noise shrinks with the dimensions removed."""
        expand = lambda v: v.reshape(v.shape + (1,) * (kept.ndim - 1))  # noqa: E731
        shrink = expand(weights2) * (1.0 - kept / expand(self.sizes))
        signals = []
        for energy, noise in ((energy_x, noise_x), (energy_y, noise_y)):
            total = np.tensordot(weights2, energy, axes=1)
            signals.append(np.maximum(total - np.sum(shrink * noise, axis=0), NOISE_FLOOR * total))
        product = signals[0] * signals[1]
        return np.where(product > 0, np.tensordot(weights2, dot, axes=1) / np.sqrt(np.where(product > 0, product, 1.0)), 0.0)

    def member_residuals(self) -> np.ndarray:
        """[a, b]: the residual cosine of touching members a and b, both left out of the background."""
        grid = np.ix_(self.members, self.members)
        pick = lambda attribute: np.stack([getattr(v, attribute)[grid] for v in self.views])  # noqa: E731
        noise = np.stack([v.noise[self.members] for v in self.views])
        energy = pick("pair_energy")
        return self._cosine(self.weights2, pick("pair_dot"), energy, np.swapaxes(energy, 1, 2), noise[:, :, None],
                            noise[:, None, :], pick("pair_kept"))


def _z(score: float, cohort_scores: np.ndarray) -> float:
    """`score` z-scored against `cohort_scores` (spread floored at SPREAD_FLOOR)."""
    return (score - float(cohort_scores.mean())) / max(float(cohort_scores.std(ddof=1)), SPREAD_FLOOR)


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

    @functools.cached_property
    def _fit(self) -> tuple[float, float, int]:
        """(centre, scale, df): the scores' mean, and a scale no smaller than their spread nor than
        the median scale their top TAIL_FRACTION implies (each of those scores read as the Student-t
        quantile at its observed exceedance rate). A null holds a few pairs of members trained on
        similar data among others; a scale fitted to the mean and spread alone put those far into a
        tail they are not in, which made the rates about ten times too good on real fine-tunes
        (README "Calibration")."""
        from scipy.special import stdtrit

        df = self.degrees_of_freedom
        if len(self.scores) < 2:
            return float(np.mean(self.scores)) if len(self.scores) else 0.0, 1.0, df
        centre = float(np.mean(self.scores))
        spread = max(float(np.std(self.scores, ddof=1)), 1e-6)
        top = np.sort(self.scores)[::-1][: max(MIN_TAIL, math.ceil(TAIL_FRACTION * len(self.scores)))]
        exceedance = np.arange(1, len(top) + 1) / (len(self.scores) + 1)
        upper = exceedance < 0.5  # scores above the t's median imply a scale; the rest say nothing of the tail
        implied = (top[upper] - centre) / -stdtrit(df, exceedance[upper])
        return centre, max(spread, float(np.median(implied))) if upper.any() else spread, df

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


@dataclass(frozen=True)
class CohortNull:
    """A cohort's two nulls, read conservatively: every rate is the larger of the two fits'.

    `nearest` (each member against its NULL_NEIGHBOURS nearest members) describes siblings, the
    hard negatives; a fit to that selected sample is narrower, so far out in the tail it can fall
    below the fit to `all_pairs` (a cohort without close pairs), and the larger rate keeps the
    estimate no less conservative than either."""

    all_pairs: NullDistribution
    nearest: NullDistribution

    @property
    def degrees_of_freedom(self) -> int:
        return self.all_pairs.degrees_of_freedom

    def false_match_rate(self, normalised: float) -> float:
        """The larger of the two nulls' P(a benign pair's normalised score ≥ `normalised`)."""
        return max(self.all_pairs.false_match_rate(normalised), self.nearest.false_match_rate(normalised))

    def threshold(self, rate: float) -> float:
        """The normalised score whose estimated false-match rate is `rate` (the larger of the two)."""
        return max(self.all_pairs.threshold(rate), self.nearest.threshold(rate))


def check_background_member(member: Fingerprint) -> None:
    """Refuse, for a cohort, a delta whose energy is no more than CHANGED × its expected rounding
    noise: the base itself or a re-save of it (an fp16 re-save measures ≈ 1×; the lightest synthetic
    fine-tune far above). Such a member narrows the cohort's null, which makes every estimate more
    confident than the cohort supports. Checked when members are added (by the CLI or from a
    partner's bundle), not when a stored cohort is loaded."""
    energy = sum(float(np.sum(np.square(sketch))) for sketch in member.sketches.values())
    if not energy > CHANGED * sum(member.noise.values()):
        raise FingerprintError("a background model must change its base: this one changes nothing beyond rounding noise (the base itself, or a re-save of it)")


class Cohort:
    """Known-benign models derived from one base, and the calibration they give.

    `members` are delta fingerprints (checkpoints taken against `base`, or LoRAs for it) sharing
    one key and scheme. Null distributions are computed per set of compared tensors and cached.
    """

    def __init__(
        self,
        base: str,
        members: Sequence[Fingerprint],
        components: int = DEFAULT_COMPONENTS,
        sides: str = "query",
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

    def _touching(self, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices of the members touching a tensor of `layout`, their typical change energy per
        tensor, tensor weights: 1/RMS per sketch element of that change). Both are floored at
        1/WEIGHT_CAP² of the median energy per element, so no weight exceeds WEIGHT_CAP × the median
        and a tensor the cohort leaves unchanged still has a typical energy (`noise_weights2`)."""
        index = np.array([i for i, m in enumerate(self.members) if any(n in m.sketches for n, _ in layout)], dtype=np.intp)
        touching = [self.members[i] for i in index]
        sizes = np.array([size for _, size in layout], dtype=float)
        energy = np.array([np.mean([max(float(np.sum(m.sketches[n] ** 2)) - m.noise[n], 0.0)
                                    if n in m.sketches and m.sketches[n].size == size else 0.0 for m in touching])
                           for n, size in layout])
        per_element = energy / sizes
        positive = per_element[per_element > 0]
        floor = float(np.median(positive)) / WEIGHT_CAP**2 if positive.size else 1.0
        per_element = np.maximum(per_element, floor)
        return index, per_element * sizes, 1.0 / np.sqrt(per_element)

    @functools.lru_cache(maxsize=None)  # noqa: B019 - a cohort lives as long as the matcher holding it
    def _view(self, name: str, size: int) -> _TensorView:
        """One tensor's backgrounds: computed once per cohort, shared by every set of compared tensors."""
        return _TensorView.build(self.members, name, size, self.components)

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a cohort lives as long as the matcher holding it
    def _table(self, layout: Layout) -> tuple[_TensorSpace, CohortNull]:
        """(the cohort over `layout`, its null). A null pair (i, j) is scored as a query i against a
        listed j: the residual with neither in the background, z-scored against i's residuals with
        every other member m, each with neither i nor m in the background. Every ordered pair makes
        the all-pairs null; each member with its NULL_NEIGHBOURS nearest others (by that residual,
        each unordered pair once when both sides are normalised) makes the nearest-pairs null: the
        benign models most like a query, the kind of pair a listed model's siblings are."""
        index, typical, weights = self._touching(layout)
        space = _TensorSpace(tuple(self._view(name, size) for name, size in layout), weights**2, typical, index)
        residuals = space.member_residuals()
        n = len(index)
        z = np.zeros((n, n))
        for i, j in ((i, j) for i in range(n) for j in range(n) if i != j):
            z[i, j] = np.mean([_z(residuals[i, j], residuals[side, [m for m in range(n) if m not in (i, j)]])
                               for side in ((i, j) if self.sides == "both" else (i,))])
        diagonal = np.eye(n, dtype=bool)
        ranked = np.argsort(-np.where(diagonal, -np.inf, np.nan_to_num(residuals, nan=-np.inf)), axis=1, kind="stable")
        near = {(i, int(j)) for i in range(n) for j in ranked[i, : min(NULL_NEIGHBOURS, n - 1)]}
        if self.sides == "both":  # z[i, j] == z[j, i]: a mutual neighbour pair counts once
            near = {(min(i, j), max(i, j)) for i, j in near}
        nearest = np.array([z[i, j] for i, j in sorted(near)])
        return space, CohortNull(NullDistribution(z[~diagonal], n, self.components), NullDistribution(nearest, n, self.components))

    def null(self, listed: Fingerprint, names: Sequence[str]) -> CohortNull:
        """The null of normalised scores over the tensors `names` of `listed`."""
        return self._table(_layout(listed, names))[1]

    def score(self, query: Fingerprint, listed: Fingerprint, names: Sequence[str], similarity: float) -> CalibratedScore:
        """Calibrate one comparison over the tensors `names` (those `fuzzy.compare` used)."""
        usable = self.covering(names)
        if usable < MIN_COHORT or not names:
            return CalibratedScore(similarity, calibrated=False, cohort_size=usable, tensors=len(names))
        query.check_compatible(self.members[0])
        layout = _layout(listed, names)
        space, null = self._table(layout)
        q, l = space.side(query, layout), space.side(listed, layout)
        cross = np.array([float(query.sketches[n].ravel() @ listed.sketches[n].ravel())
                          if n in query.sketches and n in listed.sketches and query.sketches[n].size == size else 0.0
                          for n, size in layout])
        weights2 = space.noise_weights2(q, l)
        residual = space.residual(q, l, cross, weights2)
        z = []
        for side in (q, l) if self.sides == "both" else (q,):
            z.append(_z(residual, space.cohort_residuals(side, weights2)))
        normalised = float(np.mean(z))
        return CalibratedScore(similarity, True, residual, normalised, null.false_match_rate(normalised), len(space.members), len(names))


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
    return _calibrated(query, listed, cohort_for(query, listed, cohorts), statistics.names, statistics.similarity())


def _calibrated(query: Fingerprint, listed: Fingerprint, cohort: Cohort | None, names: Sequence[str], similarity: float) -> CalibratedScore:
    """The comparison over `names` with raw `similarity`, calibrated against `cohort` when there is one."""
    if cohort is None:
        return CalibratedScore(similarity, calibrated=False, tensors=len(names))
    return cohort.score(query, listed, names, similarity)


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
    is the residual cosine; without one this is plain `compare` plus an uncalibrated score. Equal
    to `compare(..., background=...)` and `calibrate(...)`, with the pair's statistics, cohort and
    raw similarity computed once (the matcher scores every candidate this way)."""
    statistics = pair_statistics(query, listed)
    cohort = cohort_for(query, listed, cohorts)
    background = cohort.background if cohort is not None else None
    comparison = compare(query, listed, breakdown=breakdown, statistics=statistics, background=background)
    return comparison, _calibrated(query, listed, cohort, statistics.names, comparison.similarity)
