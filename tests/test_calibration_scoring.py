"""Cohort calibration on synthetic families whose fine-tunes share a benign direction."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelsieve.fingerprint import calibration
from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.calibration import (
    MIN_COHORT,
    CalibratedScore,
    Cohort,
    CohortNull,
    NullDistribution,
    Policy,
    calibrate,
    cohort_for,
)
from modelsieve.fingerprint.errors import FingerprintError, FingerprintMismatchError
from modelsieve.fingerprint.fuzzy import Fingerprint, FingerprintKey, compare, fingerprint_tensors
from tests.calibration_fixtures import KEY, SIZE, base, cohorts, family, fp, tuned


def listed() -> Fingerprint:
    return tuned(1)


NEAR_COPIES = {
    "fp16": lambda f: syn.resave(f.fine_tune(1, SIZE), "fp16"),
    "bf16": lambda f: syn.resave(f.fine_tune(1, SIZE), "bf16"),
    "50/50 merge": lambda f: syn.weighted_sum(f.fine_tune(1, SIZE), f.fine_tune(2, SIZE), 0.5),
    "further fine-tune (+50 %)": lambda f: syn.apply_delta(f.fine_tune(1, SIZE), f.delta(50, SIZE), 0.5),
    "noise = delta norm": lambda f: syn.add_noise(f.fine_tune(1, SIZE), f.delta(1, SIZE), 1.0, seed=3),
}


@pytest.mark.parametrize("row", NEAR_COPIES)
def test_near_copies_reach_the_action_threshold(row: str) -> None:
    score = calibrate(fp(NEAR_COPIES[row](family())), listed(), cohorts())
    assert score.calibrated and score.cohort_size == 10
    assert score.decision() == "action", score


def test_correlated_siblings_stay_below_action_although_their_raw_cosine_is_high() -> None:
    scores = [calibrate(tuned(seed), listed(), cohorts()) for seed in range(10, 16)]
    raw = [s.similarity for s in scores]
    assert 0.2 < min(raw) and max(raw) < 0.6  # the hard case: raw cosines a synthetic-only threshold would flag
    assert all(s.decision() != "action" for s in scores), scores
    weakest_copy = calibrate(fp(NEAR_COPIES["noise = delta norm"](family())), listed(), cohorts())
    assert weakest_copy.normalised > max(s.normalised for s in scores)
    # projecting out the benign direction widens the gap between copies and siblings
    assert weakest_copy.residual - max(s.residual for s in scores) > weakest_copy.similarity - max(raw)


def test_without_a_cohort_scores_are_flagged_uncalibrated() -> None:
    score = calibrate(tuned(10), listed())
    comparison = compare(tuned(10), listed())
    assert score == CalibratedScore(comparison.similarity, calibrated=False, tensors=comparison.tensors_compared)
    assert score.false_match_text == "uncalibrated" and score.to_json()["normalised"] is None
    copy = calibrate(fp(NEAR_COPIES["fp16"](family())), listed(), {"other-base": cohorts()["sd15"]})
    assert not copy.calibrated and copy.decision() == "review"  # never "action" uncalibrated by default
    assert copy.decision(Policy(uncalibrated_action=0.9)) == "action"


def test_an_uncalibrated_comparison_over_few_tensors_needs_a_strong_similarity() -> None:
    """Benign one-module LoRAs reached similarity 0.6 against a listed LoRA on the same module
    (11 % of 300 over 0.35): over few tensors chance similarity spreads wider than the raw
    threshold assumes."""
    few, many = CalibratedScore(0.6, calibrated=False, tensors=1), CalibratedScore(0.6, calibrated=False, tensors=8)
    assert (few.decision(), many.decision()) == (None, "review")
    assert CalibratedScore(0.95, calibrated=False, tensors=1).decision() == "review"
    assert few.decision(Policy(uncalibrated_min_tensors=1)) == "review"


def test_a_cohort_too_small_for_the_compared_tensors_is_uncalibrated() -> None:
    small = {"sd15": Cohort("sd15", [tuned(seed) for seed in range(100, 100 + MIN_COHORT - 1)])}
    score = calibrate(tuned(10), listed(), small)
    assert not score.calibrated and score.cohort_size == MIN_COHORT - 1 and score.normalised is None


def test_lora_comparisons_find_the_cohort_covering_their_tensors() -> None:
    lora = fingerprint_tensors(syn.peft_layout(family().lora(1)), KEY)
    copy = fingerprint_tensors(syn.peft_layout(syn.resize_lora(family().lora(1), 8)), KEY)
    assert lora.base is None and cohort_for(copy, lora, cohorts()) is cohorts()["sd15"]
    score = calibrate(copy, lora, cohorts())
    assert score.calibrated and score.decision() == "action"
    assert cohort_for(copy, lora, {}) is None


def test_cohort_members_must_be_deltas_of_its_base_with_one_key() -> None:
    with pytest.raises(FingerprintError, match="delta"):
        Cohort("sd15", [base().fingerprint])
    with pytest.raises(FingerprintMismatchError, match="base"):
        Cohort("sdxl", [tuned(100)])
    other_key = fingerprint_tensors(family().fine_tune(3, SIZE), FingerprintKey("other", b"another key of 16+ bytes"))
    with pytest.raises(FingerprintMismatchError):
        Cohort("sd15", [tuned(100), other_key])
    with pytest.raises(FingerprintError, match="rate"):
        Policy(review_rate=1e-6, action_rate=1e-3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=40), st.floats(-50, 50), st.floats(0, 30), st.integers(4, 60))
def test_false_match_rate_decreases_with_the_score(null: list[float], low: float, step: float, size: int) -> None:
    distribution = NullDistribution(np.array(null), size)
    assert distribution.false_match_rate(low + step) <= distribution.false_match_rate(low)
    assert 0.0 <= distribution.false_match_rate(low) <= 1.0


def test_threshold_inverts_the_false_match_rate() -> None:
    distribution = cohorts()["sd15"].null(listed(), [n for n in listed().sketches])
    for rate in (1e-3, 1e-6):
        assert distribution.false_match_rate(distribution.threshold(rate)) == pytest.approx(rate, rel=1e-6)


@pytest.mark.parametrize(("rate", "text"), [(3e-6, "≤ 1 in 10^5"), (0.5, "≈ 1 in 1"), (1e-12, "≤ 1 in 10^12")])
def test_false_match_text_reads_as_a_bound(rate: float, text: str) -> None:
    assert CalibratedScore(0.5, True, 0.5, 5.0, rate, 10).false_match_text == text


def test_query_side_normalisation_cancels_noise_that_shrinks_every_cosine_of_the_query() -> None:
    noisy = fp(syn.add_noise(family().fine_tune(1, SIZE), family().delta(1, SIZE), 3.0, seed=3))
    members = cohorts()["sd15"].members
    query_side = calibrate(noisy, listed(), cohorts())
    both_sides = calibrate(noisy, listed(), {"sd15": Cohort("sd15", members, sides="both")})
    siblings = [calibrate(tuned(seed), listed(), cohorts()) for seed in range(10, 16)]
    assert query_side.similarity < 0.5, "the noise is strong enough to hide the copy from a raw threshold"
    assert query_side.normalised > both_sides.normalised
    assert query_side.normalised > max(s.normalised for s in siblings)
    with pytest.raises(FingerprintError, match="normalise"):
        Cohort("sd15", members, sides="listed")


def _matrix_names(count: int) -> list[str]:
    """The first `count` 2-D tensors of the listed model (sketches of 12 × 12)."""
    return [n for n, s in listed().sketches.items() if s.ndim == 2][:count]


def _sketch_model(sketches: dict[str, np.ndarray]) -> Fingerprint:
    """A noise-free delta fingerprint holding `sketches`, on the listed model's tensor shapes."""
    template = listed()
    return replace(template, sketches=sketches, shapes={n: template.shapes[n] for n in sketches}, noise=dict.fromkeys(sketches, 0.0))


def _tensorwise_family(count: int, seed: int) -> list[Fingerprint]:
    """Deltas whose benign part lies in two directions per tensor, with their own mix in every
    tensor: a subspace of 2 directions per tensor, but no few directions of the whole delta span it."""
    names = _matrix_names(8)
    shared = np.random.default_rng(0).standard_normal((len(names), 2, 144))
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        sketches = {n: (rng.uniform(0.5, 3.0, 2) @ shared[t] + rng.standard_normal(144)).reshape(12, 12)
                    for t, n in enumerate(names)}
        result.append(_sketch_model(sketches))
    return result


def test_benign_directions_are_projected_out_tensor_by_tensor() -> None:
    members, (target, *siblings) = _tensorwise_family(12, 1), _tensorwise_family(7, 2)
    tensorwise = {"sd15": Cohort("sd15", members)}
    noise = np.random.default_rng(3)
    copy = replace(target, sketches={n: s + 0.7 * noise.standard_normal(s.shape) for n, s in target.sketches.items()})
    sibling_scores = [calibrate(s, target, tensorwise) for s in siblings]
    copy_score = calibrate(copy, target, tensorwise)
    assert min(s.similarity for s in sibling_scores) > 0.5  # the benign part dominates the raw cosine
    assert max(abs(s.residual) for s in sibling_scores) < 0.25 < 0.5 < copy_score.residual
    assert all(s.decision() is None for s in sibling_scores), sibling_scores
    assert copy_score.decision() == "action", copy_score


def test_the_false_match_tail_covers_the_nulls_own_extreme_pairs() -> None:
    rng = np.random.default_rng(0)
    light = rng.standard_normal(400)
    heavy = np.concatenate([light, 5.0 + rng.standard_normal(12)])  # a few pairs of members trained on similar data
    light_null, heavy_null = NullDistribution(light, 24), NullDistribution(heavy, 24)
    assert light_null.threshold(1e-6) == pytest.approx(light.mean() + light.std(ddof=1) * 6.1, rel=0.1)  # tail ≈ spread
    top = np.sort(heavy)[::-1][:20]
    observed = np.arange(1, 21) / (len(heavy) + 1)
    fitted = np.array([heavy_null.false_match_rate(s) for s in top])
    assert np.mean(fitted >= observed) >= 0.5  # the fitted tail is not lighter than the null's own top
    moments_only = NullDistribution(heavy, 24).scores.std(ddof=1)
    assert heavy_null.threshold(1e-6) > heavy.mean() + moments_only * 6.1  # a moment fit would be optimistic


def test_leave_out_eigenproblems_solved_in_the_leading_span_match_full_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    members = _tensorwise_family(16, 4)
    names = list(members[0].sketches)
    approximate = Cohort("sd15", members).null(members[0], names).all_pairs.scores
    monkeypatch.setattr(calibration, "RITZ_EXTRA", len(members))  # every leave-out eigenproblem solved in full
    exact = Cohort("sd15", members).null(members[0], names).all_pairs.scores
    assert np.max(np.abs(approximate - exact)) < 0.05 * np.std(exact)


def test_tensor_sets_sharing_a_cohort_score_as_with_a_fresh_one() -> None:
    members, (target, query) = _tensorwise_family(12, 6), _tensorwise_family(2, 7)
    names = list(target.sketches)
    partial = replace(query, sketches={n: query.sketches[n] for n in names[:3]})
    shared = {"sd15": Cohort("sd15", members)}
    first, second = calibrate(query, target, shared), calibrate(partial, target, shared)  # the second reuses tensor views
    assert second == calibrate(partial, target, {"sd15": Cohort("sd15", members)})
    assert first == calibrate(query, target, {"sd15": Cohort("sd15", members)})
    assert first.similarity != second.similarity


def test_tensors_swamped_by_the_copys_rounding_noise_are_weighed_down() -> None:
    members, (target, *siblings) = _tensorwise_family(12, 1), _tensorwise_family(7, 2)
    tensorwise = {"sd15": Cohort("sd15", members)}
    rng = np.random.default_rng(5)
    sketches, noise = dict(target.sketches), dict(target.noise)
    for name in list(target.sketches)[::2]:  # as an fp8 file: rounding noise 16× the change, on half the tensors
        error = rng.standard_normal(sketches[name].shape)
        error *= 4 * np.linalg.norm(sketches[name]) / np.linalg.norm(error)
        sketches[name], noise[name] = sketches[name] + error, float(np.sum(error**2))
    copy_score = calibrate(replace(target, sketches=sketches, noise=noise), target, tensorwise)
    # the clean half carries the evidence: equally weighted, the noisy half pulled the residual to ≈ 0.27
    assert copy_score.residual > 0.6
    assert copy_score.decision() is not None, copy_score
    assert all(calibrate(s, target, tensorwise).decision() is None for s in siblings)


def test_every_sketch_element_counts_once_whatever_tensor_it_belongs_to() -> None:
    template = listed()
    matrices = _matrix_names(4)
    vectors = [n for n, s in template.sketches.items() if s.ndim == 1 and s.size == 12][:4]
    rng = np.random.default_rng(8)

    def model(matrix_part: dict[str, np.ndarray] | None = None) -> Fingerprint:
        sketches = {n: rng.standard_normal(template.sketches[n].shape) for n in matrices + vectors}
        sketches.update(matrix_part or {})
        return _sketch_model(sketches)

    members, target = [model() for _ in range(12)], model()
    query = model({n: target.sketches[n] for n in matrices})  # same matrices, unrelated vectors
    score = calibrate(query, target, {"sd15": Cohort("sd15", members)})
    # 4 × 144 shared elements against 4 × 12 unrelated ones: ≈ 0.92 (weighing every tensor alike gave 0.66)
    assert score.residual > 0.85, score


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-6, 1e3), st.floats(1e-6, 1e3), st.floats(0, 1e4), st.floats(0, 1e4)), min_size=1, max_size=8))
def test_the_noise_factor_only_ever_weighs_a_tensor_down_and_more_so_the_noisier_it_is(
    tensors: list[tuple[float, float, float, float]],
) -> None:
    weights2, typical, noise_x, noise_y = (np.array(column) for column in zip(*tensors, strict=True))
    space = calibration._TensorSpace((), weights2, typical, np.arange(0))
    side = lambda noise: calibration._Side(np.zeros((len(noise), 0)), np.ones(len(noise)), noise)  # noqa: E731
    clean = np.zeros(len(tensors))
    assert np.array_equal(space.noise_weights2(side(clean), side(clean)), weights2)  # noise-free: unchanged
    one_side = space.noise_weights2(side(noise_x), side(clean))
    both = space.noise_weights2(side(noise_x), side(noise_y))
    assert np.all(one_side <= weights2) and np.all(both <= one_side * (1 + 1e-12))
    assert np.array_equal(one_side[noise_x == 0], weights2[noise_x == 0])
    assert np.all(one_side[noise_x > 1e-6 * typical] < weights2[noise_x > 1e-6 * typical])


def test_a_tensor_the_cohort_leaves_unchanged_keeps_a_typical_change_and_a_capped_weight() -> None:
    members = _tensorwise_family(8, 3)
    untouched = "an.untouched.tensor"
    cohort = Cohort("sd15", [replace(m, sketches={**m.sketches, untouched: np.zeros((12, 12))},
                                     shapes={**m.shapes, untouched: (12, 12)}, noise={**m.noise, untouched: 0.0}) for m in members])
    layout = (*((n, 144) for n in members[0].sketches), (untouched, 144))
    _, typical, weights = cohort._touching(layout)
    assert np.all(typical > 0)  # so rounding noise scales its weight smoothly, never to 0 at once
    assert weights.max() <= calibration.WEIGHT_CAP * np.median(weights) * (1 + 1e-9)


def _domain_models(domains: int, per_domain: int, seed: int) -> list[list[Fingerprint]]:
    """Models trained on `domains` kinds of data, `per_domain` each: a shared benign part, a strong
    part of their domain (what two models on the same data share) and their own part, per tensor."""
    names = _matrix_names(8)
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((len(names), 144))
    result = []
    for _ in range(domains):
        domain = rng.standard_normal((len(names), 144))
        models = []
        for _ in range(per_domain):
            own = rng.standard_normal((len(names), 144))
            sketches = {n: (0.5 * shared[t] + 0.6 * domain[t] + own[t]).reshape(12, 12) for t, n in enumerate(names)}
            models.append(_sketch_model(sketches))
        result.append(models)
    return result


def test_false_match_estimates_hold_for_models_trained_on_the_same_kind_of_data() -> None:
    population = _domain_models(20, 2, 11)  # one population: 12 domains make the cohort, 8 are screened
    cohort = {"sd15": Cohort("sd15", [m for pair in population[:12] for m in pair])}
    siblings = [calibrate(q, l, cohort) for a, b in population[12:] for q, l in ((a, b), (b, a))]
    assert np.median([s.similarity for s in siblings]) > 0.3  # same data: a raw threshold would flag them
    # the nearest-pairs null holds pairs like these, so few come out rare (≤ 0.1); over all pairs 15-16 of 16 did
    assert sum(s.false_match_rate <= 0.1 for s in siblings) <= 6, [s.false_match_rate for s in siblings]
    assert all(s.decision() is None for s in siblings)
    target, unrelated = population[12][0], [pair[0] for pair in population[13:]]
    copy = replace(target, sketches={n: s + 0.3 * np.random.default_rng(1).standard_normal(s.shape) for n, s in target.sketches.items()})
    assert calibrate(copy, target, cohort).decision() == "action"
    assert all(calibrate(model, target, cohort).decision() is None for model in unrelated)


def test_the_null_is_never_less_conservative_than_over_all_pairs() -> None:
    rng = np.random.default_rng(4)
    everything = rng.standard_normal(24 * 23)
    nearest = np.sort(everything)[::-1][: 4 * 24]  # a selected sample: higher, but narrower
    null = CohortNull(NullDistribution(everything, 24), NullDistribution(nearest, 24))
    for rate in (1e-1, 1e-3, 1e-6):
        threshold = null.threshold(rate)
        assert threshold >= max(null.all_pairs.threshold(rate), null.nearest.threshold(rate))
        assert null.false_match_rate(threshold) == pytest.approx(rate, rel=1e-6)
    assert null.all_pairs.threshold(1e-6) > null.nearest.threshold(1e-6)  # the case the larger rate guards against
