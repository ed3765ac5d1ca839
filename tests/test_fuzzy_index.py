"""Index vectors, sign codes and Hamming search: near-copies are candidates, siblings mostly not."""

from __future__ import annotations

import numpy as np

from modelsieve.fingerprint import synthetic as syn
from modelsieve.fingerprint.fuzzy import (
    CANDIDATE_MAX_HAMMING,
    INDEX_DIM,
    BaseModel,
    FingerprintKey,
    background_directions,
    fingerprint_tensors,
    hamming_distances,
    index_vectors,
    lsh_keys,
    sign_codes,
)

KEY = FingerprintKey("test", b"modelsieve test key 0001")


def test_index_vectors_codes_and_hamming_distances() -> None:
    # independent deltas (no shared benign component): correlated siblings are candidates by design,
    # the full comparison rejects them (see the README on candidate search)
    family = syn.Family(11, syn.Architecture(scale=20, text_layers=2, vocab=300), 0.0, 0.0)
    base = BaseModel("sd15", fingerprint_tensors(family.base, KEY))
    listed = fingerprint_tensors(family.fine_tune(1, 0.005), KEY, [base])
    vectors = index_vectors(listed)
    assert set(vectors) == {"unet", "text_encoder"}
    for vector in vectors.values():
        assert vector.shape == (INDEX_DIM,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    merged = fingerprint_tensors(syn.weighted_sum(family.fine_tune(1, 0.005), family.fine_tune(2, 0.005), 0.3), KEY, [base])
    siblings = [fingerprint_tensors(family.fine_tune(s, 0.005), KEY, [base]) for s in range(20, 26)]
    table = np.frombuffer(b"".join(sign_codes(f)["unet"] for f in [merged, *siblings]), dtype=np.uint8).reshape(7, -1)
    distances = hamming_distances(sign_codes(listed)["unet"], table)
    brute = [sum(bin(a ^ b).count("1") for a, b in zip(sign_codes(listed)["unet"], row.tobytes())) for row in table]
    assert distances.tolist() == brute
    assert distances[0] <= CANDIDATE_MAX_HAMMING < distances[1:].min()
    keys = lsh_keys(listed)
    assert len(keys) == 2 * INDEX_DIM // 16 and all(-(2**63) <= k < 2**63 for k in keys)
    assert lsh_keys(listed) == keys


def test_removing_the_benign_background_makes_correlated_siblings_non_candidates() -> None:
    family = syn.Family(12, syn.Architecture(scale=20, text_layers=2, vocab=300))  # siblings correlate at 0.1-0.3
    base = BaseModel("sd15", fingerprint_tensors(family.base, KEY))
    fps = [fingerprint_tensors(family.fine_tune(s, 0.005), KEY, [base]) for s in range(12)]
    cohort, listed, others = fps[:6], fps[6], fps[7:]
    background = {"unet": background_directions([index_vectors(f)["unet"] for f in cohort], 1)}
    merged = fingerprint_tensors(syn.weighted_sum(family.fine_tune(6, 0.005), family.fine_tune(20, 0.005), 0.3), KEY, [base])

    def distances(bg):
        table = np.frombuffer(b"".join(sign_codes(f, bg)["unet"] for f in [merged, *others]), np.uint8).reshape(1 + len(others), -1)
        return hamming_distances(sign_codes(listed, bg)["unet"], table)

    plain, cleaned = distances(None), distances(background)
    assert plain[0] <= CANDIDATE_MAX_HAMMING and cleaned[0] <= CANDIDATE_MAX_HAMMING
    assert (plain[1:] <= CANDIDATE_MAX_HAMMING).sum() > (cleaned[1:] <= CANDIDATE_MAX_HAMMING).sum()
    assert (cleaned[1:] <= CANDIDATE_MAX_HAMMING).sum() <= 1


def test_an_adapter_without_index_role_modules_is_indexed_on_all_its_tensors() -> None:
    """Only a fingerprint with no delta on the index roles falls back, so checkpoints and ordinary
    LoRAs keep their codes; zero modules planted on the roles do not take the fallback away."""
    family = syn.Family(5, syn.Architecture(scale=20, text_layers=2, vocab=300))
    lora = family.lora(1)
    self_attention = syn.LoraFactors({m: f for m, f in lora.modules.items() if ".attn1." in m})
    fingerprint = fingerprint_tensors(syn.kohya_layout(self_attention), KEY)
    assert set(index_vectors(fingerprint)) == {"unet+all"}
    role = next(m for m in lora.modules if m.endswith("attn2.to_k"))
    up, down, alpha = lora.modules[role]
    planted = syn.LoraFactors({**self_attention.modules, role: (np.zeros_like(up), down, alpha)})
    assert sign_codes(fingerprint_tensors(syn.kohya_layout(planted), KEY)) == sign_codes(fingerprint)
    assert set(index_vectors(fingerprint_tensors(syn.kohya_layout(lora), KEY))) == {"unet", "text_encoder"}
