"""Safe readers for model files: one interface, every format, nothing executed.

`open_model(path)` sniffs the format and returns a `ModelReader`.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelsieve.fingerprint.errors import ModelFileError
from modelsieve.fingerprint.readers.base import ModelReader, TensorInfo
from modelsieve.fingerprint.readers.safetensors import SafetensorsReader

__all__ = ["ModelReader", "TensorInfo", "open_model"]


def open_model(path: str | os.PathLike[str]) -> ModelReader:
    """Open a model file or folder with the reader its content calls for."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    if path.is_dir():
        raise ModelFileError(f"{path}: model folders are not supported yet")
    try:
        return SafetensorsReader(path)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
