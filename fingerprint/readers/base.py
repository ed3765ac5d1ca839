"""The one reader interface every model format implements."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from modelsieve.fingerprint.dtypes import dtype_named


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name (component-qualified in multi-file models), safetensors dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtype_named(self.dtype).bits // 8


class ModelReader(abc.ABC):
    """Tensors and metadata of one model, read without executing anything from the file.

    Use as a context manager. `array()` returns a read-only numpy array in the tensor's own dtype
    (bfloat16 / float8 through ml_dtypes), zero-copy where the format allows it.
    """

    format: str
    path: Path
    metadata: Mapping[str, str]

    @abc.abstractmethod
    def tensors(self) -> Sequence[TensorInfo]:
        """Every tensor in the model, in file order."""

    @abc.abstractmethod
    def array(self, name: str) -> np.ndarray:
        """The tensor's values; raises ModelFileError when they cannot be viewed."""

    def problems(self) -> list[str]:
        """Non-fatal oddities noticed while reading (shown by `modelsieve inspect`)."""
        return []

    def close(self) -> None:
        """Release file handles and maps; arrays already handed out stay valid."""

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
