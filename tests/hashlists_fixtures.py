"""Small synthetic LoRA adapters (random weights, kohya key names) for hashlists tests."""

from __future__ import annotations

import numpy as np

from modelsieve.fingerprint.fuzzy import Fingerprint, fingerprint_tensors

PROJECTIONS = {"attn2_to_k": (64, 48), "attn2_to_v": (64, 48), "attn1_to_q": (64, 64)}


def lora_arrays(seed: int, *, rank: int = 4, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """A random kohya-style LoRA on three attention blocks (includes the index tensors attn2.to_k/v)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for block in range(3):
        for projection, (rows, cols) in PROJECTIONS.items():
            module = f"lora_unet_down_blocks_{block}_attentions_0_transformer_blocks_0_{projection}"
            arrays[f"{module}.lora_down.weight"] = rng.standard_normal((rank, cols)).astype(dtype)
            arrays[f"{module}.lora_up.weight"] = rng.standard_normal((rows, rank)).astype(dtype)
            arrays[f"{module}.alpha"] = np.array(rank, dtype=dtype)
    return arrays


def lora_fingerprint(seed: int, *, dtype: type = np.float32) -> Fingerprint:
    return fingerprint_tensors(lora_arrays(seed, dtype=dtype))


def merged_lora_arrays(first: dict[str, np.ndarray], second: dict[str, np.ndarray], a: float, b: float) -> dict[str, np.ndarray]:
    """A LoRA whose ΔW is a·ΔW_first + b·ΔW_second: the two ranks side by side (alpha doubled with the rank)."""
    return {k: np.concatenate([a * first[k], b * second[k]], axis=1).astype(first[k].dtype) if k.endswith("lora_up.weight") else
            np.concatenate([first[k], second[k]], axis=0) if k.endswith("lora_down.weight") else 2 * first[k]
            for k in first}
