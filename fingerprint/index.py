"""Candidate search support: fixed-size index vectors, sign codes, Hamming distances, LSH keys.

A store cannot compare a query with every listed fingerprint in full, so each fingerprint also
yields one small unit vector per model component (`unet`, `text_encoder`, ...): a keyed
feature-hashing projection of its weighted delta sketches over the INDEX_ROLES tensors (the
cross-attention key/value and text-encoder attention projections: present in every SD
checkpoint, targeted by nearly every LoRA, and fetched first by the crawler's partial reads).
Cosines between index vectors approximate the weighted delta cosine on those tensors.

Search by Hamming distance between the vectors' sign bits (INDEX_DIM bits, 64 bytes a code):
a pair with cosine c differs in a fraction arccos(c)/π of its bits. Weak true matches have
c ≈ 0.3–0.4 (41–40 % of bits differ) while unrelated pairs differ in 50 %, so a linear scan of
the codes with `hamming_distances` and a cut at CANDIDATE_MAX_HAMMING keeps high recall at a
small candidate fraction (the README gives the measured numbers). Banded LSH keys
(`lsh_keys`) only find strong matches (c ≳ 0.8) with few bands; they are offered for key-value
stores, not recommended for weak matches.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from modelsieve.fingerprint.fpformat import Fingerprint
from modelsieve.fingerprint.names import component_of, role_of
from modelsieve.fingerprint.scoring import tensor_weights

INDEX_DIM = 512
INDEX_ROLES = ("attn2.to_k", "attn2.to_v", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
# A fingerprint without INDEX_ROLES tensors (an adapter on self-attention or feed-forward layers
# only) is indexed on all of its tensors, per component under its name + ALL_TENSORS: such
# fingerprints find each other and never meet role-indexed codes, which describe other tensors.
ALL_TENSORS = "+all"
CANDIDATE_MAX_HAMMING = 226  # of 512 bits; see the README for the recall / candidate-fraction trade-off
LSH_BAND_BITS = 16


@functools.lru_cache(maxsize=8192)
def _hashing(secret_check: str, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    seed = hashlib.blake2b(f"{secret_check}:{name}".encode(), digest_size=16, person=b"msfp-index").digest()
    generator = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "little")))
    return generator.integers(0, INDEX_DIM, size), generator.choice(np.array([-1.0, 1.0]), size)


def background_directions(vectors: Sequence[np.ndarray], count: int = 1) -> np.ndarray:
    """The top `count` uncentred principal directions (count × INDEX_DIM) of one component's index vectors.

    Fine-tunes of one base share benign directions (siblings' deltas correlate at 0.1–0.3), which
    makes most siblings Hamming candidates of each other. Taken from a cohort of benign models (or
    from a store's own listed entries, dominated by the same base), these directions can be passed
    to `index_vectors(..., background=)` for listed and query alike to take them out.
    """
    matrix = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), INDEX_DIM)
    return np.linalg.svd(matrix, full_matrices=False)[2][:count]


def index_vectors(fp: Fingerprint, background: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One unit float32 vector of INDEX_DIM per component with a nonzero delta on its INDEX_ROLES
    tensors; for a fingerprint with no such delta at all, per component over all of its tensors
    (keyed name + ALL_TENSORS).

    `background` maps a component to directions (m × INDEX_DIM) projected out before normalising.
    """
    weights = tensor_weights(fp)

    def projected(names: list[str]) -> np.ndarray:
        vector = np.zeros(INDEX_DIM)
        for name in names:
            flat = fp.sketches[name].ravel() * weights[name]
            buckets, signs = _hashing(fp.key_id + fp.key_check, name, flat.size)
            np.add.at(vector, buckets, signs * flat)
        return vector

    by_component: dict[str, list[str]] = {}
    for name in fp.sketches:
        by_component.setdefault(component_of(name), []).append(name)
    vectors = {}
    for component, names in by_component.items():
        vector = projected([name for name in names if role_of(name) in INDEX_ROLES])
        if vector.any():
            vectors[component] = vector
    if not vectors:  # no role tensor with a delta (none, or zero modules planted to claim the role index)
        vectors = {component + ALL_TENSORS: projected(names) for component, names in by_component.items()}
    result = {}
    for component, vector in vectors.items():
        if background is not None and component in background:
            basis = np.linalg.qr(np.asarray(background[component], dtype=np.float64).reshape(-1, INDEX_DIM).T)[0]
            vector = vector - basis @ (basis.T @ vector)
        norm = np.linalg.norm(vector)
        if norm > 0:
            result[component] = (vector / norm).astype(np.float32)
    return result


def sign_code(vector: np.ndarray) -> bytes:
    """The INDEX_DIM sign bits of an index vector, packed into INDEX_DIM / 8 bytes."""
    return np.packbits(np.asarray(vector) > 0).tobytes()


def sign_codes(fp: Fingerprint, background: Mapping[str, np.ndarray] | None = None) -> dict[str, bytes]:
    """The sign code of each of the fingerprint's index vectors, by component (see `index_vectors`)."""
    return {component: sign_code(v) for component, v in index_vectors(fp, background).items()}


def hamming_distances(code: bytes, codes: np.ndarray) -> np.ndarray:
    """Hamming distances between one code and an (n × INDEX_DIM/8) uint8 array of codes."""
    query = np.frombuffer(code, dtype=np.uint64)
    table = np.ascontiguousarray(codes, dtype=np.uint8).view(np.uint64).reshape(len(codes), -1)
    return np.bitwise_count(table ^ query).sum(axis=1, dtype=np.int64)


def lsh_keys(fp: Fingerprint, background: Mapping[str, np.ndarray] | None = None) -> list[int]:
    """Banded LSH keys (signed 64-bit ints): one per LSH_BAND_BITS-bit band of each component's sign code."""
    keys = []
    for component, code in sign_codes(fp, background).items():
        step = LSH_BAND_BITS // 8
        for band in range(0, len(code), step):
            digest = hashlib.blake2b(f"{component}:{band}:".encode() + code[band : band + step], digest_size=8).digest()
            keys.append(struct.unpack("<q", digest)[0])
    return keys
