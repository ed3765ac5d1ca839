"""Recognise a model file's format by its first bytes (never by its name alone) and open it."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from modelsieve.fingerprint.errors import ModelFileError
from modelsieve.fingerprint.readers.base import ModelReader
from modelsieve.fingerprint.readers.pytorch import PyTorchReader
from modelsieve.fingerprint.readers.safetensors import SafetensorsReader

SNIFF_BYTES = 16
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# Formats recognised only to name them in the error: modelsieve does not read them.
_UNSUPPORTED_MAGIC = (
    (b"GGUF", "GGUF"),
    (b"\x89HDF\r\n\x1a\n", "HDF5 (Keras)"),
    (b"\x93NUMPY", "numpy .npy"),
    (b"\x1f\x8b", "gzip"),
    (b"PK\x05\x06", "an empty zip archive"),
)


def sniff_format(head: bytes) -> str:
    """The format a file's first bytes announce: `safetensors`, `pytorch-zip`, `pytorch-legacy` or `unknown`.

    Cheap and permissive: the reader for the format does the real validation.
    """
    if head.startswith(b"PK\x03\x04"):
        return "pytorch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pytorch-legacy"  # a pickle; torch's legacy format is a sequence of them
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] >= 2:
        return "safetensors"
    return "unknown"


def _describe_unknown(head: bytes) -> str:
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return f"unsupported format: {name}"
    if head.startswith(b"\x80") or head[:1] in (b"(", b"}", b"]"):
        return "unsupported pickle protocol or a pickle that is not a torch checkpoint"
    return "unknown format: not safetensors, not a torch checkpoint"


def open_model_file(path: str | os.PathLike[str]) -> ModelReader:
    """Open one model file with the reader its content calls for; errors name the file."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a pipe cannot be re-read, and opening a FIFO could wait forever
            raise ModelFileError("not a regular file (a pipe or a device?): models are read from files")
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
        if not head:
            raise ModelFileError("empty file")
        kind = sniff_format(head)
        if kind == "unknown" and path.suffix.lower() == ".safetensors":
            kind = "safetensors"  # let the strict parser say exactly what is wrong
        if kind == "unknown":
            raise ModelFileError(_describe_unknown(head))
        return SafetensorsReader(path) if kind == "safetensors" else PyTorchReader(path)
    except ModelFileError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
