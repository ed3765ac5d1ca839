"""The linear bilinear sketch: S = Rᵀ W C per 2-D view, S = Rᵀ w per vector.

Linearity is the point: S(base + Δ) = S(base) + S(Δ), so a delta's sketch is a subtraction, a
LoRA's sketch comes from its factors, and a merge's sketch is the merge of the sketches.

Speed: reading fp16/bf16 weights is dominated by the conversion to float32, so tensors are cut
into row chunks of about a million elements and converted and multiplied on a small thread pool
(numpy releases the GIL in both), with BLAS held to one thread so the pool owns the cores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from modelsieve.fingerprint.errors import FingerprintError
from modelsieve.fingerprint.keys import SKETCH_SIZE, FingerprintKey, projection

CHUNK_ELEMENTS = 1 << 20
DEFAULT_THREADS = 2
MAX_VIEW_SIDE = 1 << 20
"""Longest side of a sketched view. A side of n rows needs an n × 12 float32 projection: 48 bytes
per row, so a one-column float8 tensor would cost 48× its size in the file (a 1 GB file, 48 GB).
Image models' longest side is a text encoder's vocabulary (49,408 rows)."""

# Relative RMS error of rounding Gaussian-like weights to each storage type (measured with numpy /
# ml_dtypes casts). A delta read from a file stored in that type carries about this much noise
# times ‖W‖; scoring subtracts that expected noise energy (see scoring.py).
_ROUNDING_ERROR = {"float16": 2.1e-4, "bfloat16": 1.7e-3, "float8_e4m3fn": 2.9e-2, "float8_e4m3fnuz": 2.9e-2,
                   "float8_e4m3": 2.9e-2, "float8_e5m2": 5.3e-2, "float8_e5m2fnuz": 5.3e-2, "float8_e8m0fnu": 0.3}


def rounding_error(dtype: np.dtype) -> float:
    """Relative RMS rounding error of a storage dtype (0 for float32/float64)."""
    return _ROUNDING_ERROR.get(np.dtype(dtype).name, 0.0)


def view_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape a tensor is sketched in: (out, in·kh·kw) for ≥ 2-D, (n,) for vectors, None for scalars."""
    if len(shape) == 0 or math.prod(shape) == 0:
        return None
    if len(shape) == 1:
        return (shape[0],)
    return (shape[0], math.prod(shape[1:]))


def sketch_shape(view: tuple[int, ...]) -> tuple[int, ...]:
    """(k, k) for a 2-D view, (k,) for a vector."""
    return (SKETCH_SIZE,) * len(view)


def _chunks(view: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    columns = view[1] if len(view) == 2 else 1
    rows = max(1, CHUNK_ELEMENTS // columns)
    for start in range(0, view[0], rows):
        yield start, min(view[0], start + rows)


def _sketch_rows(key: FingerprintKey, matrix: np.ndarray, start: int, stop: int) -> np.ndarray:
    block = np.asarray(matrix[start:stop], dtype=np.float32)
    rows = projection(key, matrix.shape, "rows")[start:stop]
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf weights are reported by the caller
        if matrix.ndim == 1:
            return (rows.T @ block).astype(np.float64)
        return (rows.T @ (block @ projection(key, matrix.shape, "cols"))).astype(np.float64)


class LeftOut:
    """Tensors (or adapter modules) a fingerprint leaves out, and why, for its source notes.

    Leaving a bad tensor out, rather than refusing the model, keeps one planted tensor (loaders
    ignore keys they do not know) from hiding a listed model.
    """

    REASONS = {"non_finite": "holds NaN or infinite values", "oversized": "is too large to sketch", "malformed": "is malformed"}

    def __init__(self) -> None:
        self.names: dict[str, set[str]] = {reason: set() for reason in self.REASONS}

    def add(self, name: str, reason: str) -> None:
        self.names[reason].add(name)

    def all(self) -> set[str]:
        return set().union(*self.names.values())

    def notes(self) -> dict[str, object]:
        """`<reason>_left_out` counts and up to five `<reason>_examples`, for reasons that occurred."""
        notes: dict[str, object] = {}
        for reason, names in self.names.items():
            if names:
                notes[f"{reason}_left_out"] = len(names)
                notes[f"{reason}_examples"] = sorted(names)[:5]
        return notes

    def error(self, what: str) -> FingerprintError:
        """Why nothing is left to fingerprint: every `what` was left out."""
        reason, names = next((r, n) for r, n in self.names.items() if n)
        return FingerprintError(f"every {what} {self.REASONS[reason]}, e.g. {min(names)!r}")


def _refuse(name: str, reason: str) -> None:
    raise FingerprintError(f"tensor {name!r} {LeftOut.REASONS[reason]}")


def sketch_tensors(
    key: FingerprintKey,
    tensors: Iterable[tuple[str, np.ndarray]],
    threads: int = DEFAULT_THREADS,
    left_out: LeftOut | None = None,
) -> dict[str, np.ndarray]:
    """Sketch every (name, array) pair; arrays may be float16/bf16/float8/float32/float64 views.

    Returns float64 sketches keyed by name. Scalars and empty tensors are skipped. A tensor with
    NaN or infinite weights, or a side longer than MAX_VIEW_SIDE, is left out and recorded in
    `left_out`; without one it raises FingerprintError naming the tensor.
    """
    note = left_out.add if left_out is not None else _refuse
    work: list[tuple[str, np.ndarray, int, int]] = []
    for name, array in tensors:
        view = view_shape(tuple(array.shape))
        if view is None:
            continue
        if max(view) > MAX_VIEW_SIDE:
            note(name, "oversized")
            continue
        matrix = array.reshape(view)
        work.extend((name, matrix, start, stop) for start, stop in _chunks(view))
    sketches: dict[str, np.ndarray] = {}
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max(1, threads)) as pool:
        partials = pool.map(lambda item: _sketch_rows(key, item[1], item[2], item[3]), work)
        for (name, _, _, _), partial in zip(work, partials, strict=True):
            sketches[name] = sketches[name] + partial if name in sketches else partial
    for name in [name for name, sketch in sketches.items() if not np.isfinite(sketch).all()]:
        note(name, "non_finite")
        del sketches[name]
    return sketches


def sketch_product(key: FingerprintKey, up: np.ndarray, down: np.ndarray, scale: float) -> np.ndarray:
    """The sketch of scale · up @ down (out×r times r×in) without forming the product."""
    view = (up.shape[0], down.shape[1])
    left = projection(key, view, "rows").T.astype(np.float64) @ np.asarray(up, dtype=np.float64)
    right = np.asarray(down, dtype=np.float64) @ projection(key, view, "cols").astype(np.float64)
    sketch = scale * (left @ right)
    if not np.isfinite(sketch).all():
        raise FingerprintError("LoRA factors hold NaN or infinite values")
    return sketch
