"""Files that are whole or untouched: written beside their place, then renamed over it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temp file of a unique name beside `path`. When the block ends cleanly the
    file is flushed, fsynced and renamed over `path`; when it raises (Ctrl-C and SIGTERM included),
    the temp file is removed. Concurrent writers never share a temp file; OSError passes through."""
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)  # gone already after the rename
