"""Safe readers for model files: one interface, every format, nothing executed.

`open_model(path)` recognises the format by content and returns a `ModelReader`: safetensors,
PyTorch checkpoints (zip and legacy pickle formats, read without torch and without running pickle
code), sharded models (`*.index.json`) and diffusers folders (one model, component-prefixed names).
"""

from __future__ import annotations

import os
from pathlib import Path

from modelsieve.fingerprint.errors import ModelFileError
from modelsieve.fingerprint.readers.base import ModelReader, TensorInfo
from modelsieve.fingerprint.readers.fileformat import MODEL_SUFFIXES, open_model_file, sniff_format
from modelsieve.fingerprint.readers.multifile import INDEX_SUFFIXES, open_folder, open_sharded, walk_models

__all__ = ["MODEL_SUFFIXES", "ModelReader", "TensorInfo", "open_model", "sniff_format", "walk_models"]


def open_model(path: str | os.PathLike[str]) -> ModelReader:
    """Open a model file or folder with the reader its content calls for."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            return open_folder(path)
        if path.name.lower().endswith(INDEX_SUFFIXES):
            return open_sharded(path)
        if path.name == "model_index.json":
            return open_folder(path.parent)
    except OSError as exc:  # e.g. a folder we may not list
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return open_model_file(path)
