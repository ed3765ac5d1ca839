"""A synthetic family whose fine-tunes share a strong benign direction, and its background cohort."""

from __future__ import annotations

import functools

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.calibration import Cohort
from modelsieve.fingerprint.fuzzy import BaseModel, Fingerprint, FingerprintKey, fingerprint_tensors

KEY = FingerprintKey("calibration-test", b"modelsieve calibration test key")
ARCH = syn.Architecture(scale=20, text_layers=2, vocab=300)
SIZE = 0.005
BASE = "sd15"
COHORT_SEEDS = range(100, 110)


@functools.cache
def family() -> syn.Family:
    # a strong shared benign component: independent fine-tunes have delta cosines of about 0.3-0.5
    return syn.Family(5, ARCH, 0.35, 0.55)


@functools.cache
def base() -> BaseModel:
    return BaseModel(BASE, fingerprint_tensors(family().checkpoint(family().base), KEY))


def fp(tensors: syn.Tensors) -> Fingerprint:
    return fingerprint_tensors(tensors, KEY, [base()], require_base=True)


@functools.cache
def tuned(seed: int) -> Fingerprint:
    """An independent fine-tune of the family (seed 1 is the listed model)."""
    return fp(family().fine_tune(seed, SIZE))


@functools.cache
def cohorts() -> dict[str, Cohort]:
    return {BASE: Cohort(BASE, [tuned(seed) for seed in COHORT_SEEDS])}
