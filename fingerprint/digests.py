"""Whole-file digests, every one computed from a single sequential read.

Names (lower-case everywhere) and definitions — see README "Whole-file digests":

- ``sha256``, ``blake3``, ``md5``, ``sha1``: of the whole file, lower-case hex.
- ``crc32``: CRC-32 (zlib polynomial) of the whole file in Civitai's form: the four CRC bytes in
  little-endian order as 8 upper-case hex ("hello world" → ``85114A0D``; zlib's integer is
  0x0D4A1185).
- ``autov1``: A1111's legacy model hash: first 8 hex of the SHA-256 of the 0x10000 bytes at
  offset 0x100000. None for files shorter than 0x200000 bytes (Civitai's rule).
- ``autov2``: first 10 hex of the whole-file SHA-256 (A1111's short hash).
- ``autov3``: SHA-256 of the bytes after a safetensors header, [8 + N, EOF) where N is the
  little-endian u64 in bytes 0–7 (kohya/A1111 ``addnet_hash_safetensors``); when N ≥ 16 MiB the
  header is not skipped and the hash runs from byte 8. Computed, as Civitai's model scanner
  (civitai/model-scanner, HashTask.cs) computes it, for every file whatever its format: a .ckpt's
  first 8 bytes make N ≥ 16 MiB, so its AutoV3 is the SHA-256 from byte 8. None for files shorter
  than 8 bytes or whose N < 16 MiB runs past the end (where Civitai's scanner fails).

`MultiDigest` takes the bytes in order from any source (a file, a download, an upload).
`hash_file` reads a file once and overlaps the digests on worker threads: hashlib, blake3 and
zlib-ng release the GIL on large buffers, so whole-file SHA-256, AutoV3's SHA-256, BLAKE3 and
CRC32 run side by side over the same chunk.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import queue
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import blake3
from zlib_ng import zlib_ng

from modelsieve.fingerprint.errors import ModelFileError, ModelsieveError
from modelsieve.fingerprint.readers.safetensors import parse_header, read_header_length

DIGEST_NAMES = ("sha256", "blake3", "crc32", "md5", "sha1", "autov1", "autov2", "autov3")
DEFAULT_DIGESTS = ("sha256", "blake3", "crc32", "autov1", "autov2", "autov3")

AUTOV1_OFFSET = 0x100000
AUTOV1_LENGTH = 0x10000
AUTOV1_MIN_FILE_SIZE = 0x200000
AUTOV3_MAX_SKIPPED_HEADER = 16 * 1024 * 1024

CHUNK_SIZE = 4 * 1024 * 1024
"""Read size of `hash_file`: long GIL-free runs of each digest's C code, yet cache-friendly
(measured here: 4 MiB beat 8, 16 and 32 MiB)."""

_ZIP_MAGIC = b"PK\x03\x04"


def printed_digest(name: str, value: str) -> str:
    """A digest as people compare it and modelsieve prints it: CRC32 in Civitai's upper-case form,
    every other digest lower-case (values compare case-insensitively either way)."""
    return value.upper() if name == "crc32" else value.lower()


class UnknownDigestError(ModelsieveError):
    """A digest name that modelsieve does not compute."""


def digest_names(names: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated digest names in `DIGEST_NAMES` order (case-insensitive input)."""
    wanted = {name.strip().lower() for name in names}
    unknown = sorted(wanted - set(DIGEST_NAMES))
    if unknown:
        raise UnknownDigestError(f"unknown digest {', '.join(unknown)}; known: {', '.join(DIGEST_NAMES)}")
    if not wanted:
        raise UnknownDigestError("no digest requested")
    return tuple(name for name in DIGEST_NAMES if name in wanted)


class _Hasher(Protocol):
    def update(self, data: memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """CRC-32 through zlib-ng (several times faster than zlib here); digest() is Civitai's byte order."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: memoryview) -> None:
        self.value = zlib_ng.crc32(data, self.value)

    def digest(self) -> bytes:
        return struct.pack("<I", self.value)


class _Lane:
    """One hasher fed the part of the stream that falls in [start, end).

    `start` may begin as infinity and be set later (AutoV3 learns it from the header); it is
    always known before any byte at or past 8 reaches the lane.
    """

    def __init__(self, hasher: _Hasher, start: float = 0, end: float = math.inf) -> None:
        self.hasher = hasher
        self.start = start
        self.end = end

    def feed(self, offset: int, data: memoryview) -> None:
        low = max(self.start - offset, 0)
        high = min(self.end - offset, len(data))
        if low < high:
            self.hasher.update(data[int(low) : int(high)])


class MultiDigest:
    """Every requested digest of one byte stream, fed in order through `update`.

    >>> digest = MultiDigest(["sha256", "crc32"])
    >>> digest.update(b"hello world")
    >>> digest.hexdigests()["crc32"]
    '85114A0D'
    """

    def __init__(self, names: Iterable[str] = DEFAULT_DIGESTS) -> None:
        self.names = digest_names(names)
        self.size = 0
        self._prefix = bytearray()  # the first 8 bytes: format magic and safetensors header length
        self._header_length: int | None = None  # a plausible safetensors header's length
        self._autov3_start: int | None = None
        self._header = bytearray()
        self._lanes: dict[str, _Lane] = {}
        if "sha256" in self.names or "autov2" in self.names:
            self._lanes["sha256"] = _Lane(hashlib.sha256())
        if "blake3" in self.names:
            self._lanes["blake3"] = _Lane(blake3.blake3())
        if "crc32" in self.names:
            self._lanes["crc32"] = _Lane(_Crc32())
        for name in ("md5", "sha1"):
            if name in self.names:
                self._lanes[name] = _Lane(hashlib.new(name))
        if "autov1" in self.names:
            self._lanes["autov1"] = _Lane(hashlib.sha256(), AUTOV1_OFFSET, AUTOV1_OFFSET + AUTOV1_LENGTH)
        if "autov3" in self.names:
            self._lanes["autov3"] = _Lane(hashlib.sha256(), start=math.inf)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash the next bytes of the stream (in the calling thread)."""
        view = memoryview(data).cast("B")
        offset = self._advance(view)
        for lane in self._lanes.values():
            lane.feed(offset, view)

    def _advance(self, view: memoryview) -> int:
        """Note the bytes that follow in the stream (sniffing the header); return their offset."""
        offset = self.size
        self.size += len(view)
        if len(self._prefix) < 8:
            self._prefix += view[: 8 - len(self._prefix)]
            if len(self._prefix) == 8:
                self._learn_header_length()
        if self._header_length is not None and len(self._header) < self._header_length:
            begin = max(8 - offset, 0)
            self._header += view[begin : begin + self._header_length - len(self._header)]
        return offset

    def _learn_header_length(self) -> None:
        (length,) = struct.unpack("<Q", self._prefix)
        self._autov3_start = 8 + (length if length < AUTOV3_MAX_SKIPPED_HEADER else 0)
        if "autov3" in self._lanes:
            self._lanes["autov3"].start = self._autov3_start
        try:
            self._header_length = read_header_length(bytes(self._prefix))
        except ModelFileError:
            pass  # not safetensors

    @property
    def format(self) -> str:
        """What the bytes so far are: "safetensors" (valid header and size), "pytorch-zip" (a zip
        archive, as torch.save writes), "pickle" (a pickle stream, legacy torch.save) or "other"."""
        if self._header_length is not None and len(self._header) == self._header_length:
            try:
                parse_header(bytes(self._header), self.size)
                return "safetensors"
            except ModelFileError:
                pass
        if self._prefix.startswith(_ZIP_MAGIC):
            return "pytorch-zip"
        if len(self._prefix) >= 2 and self._prefix[0] == 0x80 and 2 <= self._prefix[1] <= 5:
            return "pickle"
        return "other"

    def hexdigests(self) -> dict[str, str | None]:
        """Each requested digest as a hex string (None where undefined: AutoV1, AutoV3)."""
        results: dict[str, str | None] = {}
        for name in self.names:
            if name == "autov1":
                value = self._hex("autov1")[:8] if self.size >= AUTOV1_MIN_FILE_SIZE else None
            elif name == "autov2":
                value = self._hex("sha256")[:10]
            elif name == "autov3":
                defined = self._autov3_start is not None and self._autov3_start <= self.size
                value = self._hex("autov3") if defined else None
            elif name == "crc32":
                value = printed_digest("crc32", self._hex("crc32"))
            else:
                value = self._hex(name)
            results[name] = value
        return results

    def _hex(self, lane: str) -> str:
        return self._lanes[lane].hasher.digest().hex()


@dataclass(frozen=True)
class FileDigests:
    """The digests of one file; `digests` maps each requested name to hex (or None)."""

    path: Path
    size: int
    format: str
    digests: dict[str, str | None]

    def to_json(self) -> dict[str, Any]:
        """The JSON Lines record: path, size, format, then every digest under its name."""
        return {"path": str(self.path), "size": self.size, "format": self.format, **self.digests}


def default_workers() -> int:
    """Hashing threads for `hash_file`: one per usable core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def hash_file(
    path: str | os.PathLike[str],
    names: Iterable[str] = DEFAULT_DIGESTS,
    *,
    workers: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> FileDigests:
    """Read the file once, in `chunk_size` pieces, and compute every requested digest.

    `workers` hashing threads (default: one per core) share the digests of each chunk;
    `on_progress(n)` is called with the number of bytes read after each chunk.
    Raises ModelFileError when the file cannot be read.
    """
    path = Path(path)
    digest = MultiDigest(names)
    workers = default_workers() if workers is None else workers
    try:
        with open(path, "rb", buffering=0) as handle:
            status = os.fstat(handle.fileno())
            if not (stat.S_ISREG(status.st_mode) or stat.S_ISFIFO(status.st_mode)):  # /dev/zero never ends
                raise ModelFileError(f"{path}: a device, not a file: only files and pipes are hashed")
            if stat.S_ISREG(status.st_mode) and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)  # generous read-ahead
            if status.st_size > 2 * chunk_size and workers > 1 and len(digest._lanes) > 1:
                _feed_in_parallel(digest, handle, workers, chunk_size, on_progress)
            else:
                _feed_in_order(digest, handle, chunk_size, on_progress)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return FileDigests(path, digest.size, digest.format, digest.hexdigests())


def _feed_in_order(
    digest: MultiDigest, handle: Any, chunk_size: int, on_progress: Callable[[int], None] | None
) -> None:
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    while count := handle.readinto(buffer):
        digest.update(view[:count])
        if on_progress:
            on_progress(count)


class _LaneWorker:
    """Feeds one lane its chunks in order, one chunk per pool task, so lanes share the workers."""

    def __init__(self, lane: _Lane, pool: ThreadPoolExecutor, failed: Callable[[BaseException], None]) -> None:
        self.lane = lane
        self.pool = pool
        self.failed = failed
        self.pending: deque[tuple[int, memoryview, _Countdown]] = deque()
        self.lock = threading.Lock()
        self.running = False

    def push(self, offset: int, data: memoryview, done: _Countdown) -> None:
        with self.lock:
            self.pending.append((offset, data, done))
            if self.running:
                return
            self.running = True
        self.pool.submit(self._step)

    def _step(self) -> None:
        with self.lock:
            offset, data, done = self.pending.popleft()
        try:
            self.lane.feed(offset, data)
        except BaseException as exc:  # handed to the reading thread, which re-raises it
            self.failed(exc)
        done.tick()
        with self.lock:
            if not self.pending:
                self.running = False
                return
        self.pool.submit(self._step)


class _Countdown:
    """Calls `action` once `count` lanes have finished with a chunk."""

    def __init__(self, count: int, action: Callable[[], None]) -> None:
        self.count = count
        self.action = action
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.count -= 1
            finished = self.count == 0
        if finished:
            self.action()


def _feed_in_parallel(
    digest: MultiDigest, handle: Any, workers: int, chunk_size: int, on_progress: Callable[[int], None] | None
) -> None:
    """Read chunks into a small pool of reused buffers; every lane hashes every chunk on the workers."""
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    buffers = [bytearray(chunk_size) for _ in range(2 * workers + 2)]
    for buffer in buffers:
        free.put(buffer)
    errors: list[BaseException] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="modelsieve-hash") as pool:
        lanes = [_LaneWorker(lane, pool, errors.append) for lane in digest._lanes.values()]
        try:
            while not errors:
                buffer = free.get()
                count = 0
                try:
                    count = handle.readinto(buffer)
                finally:
                    if not count:
                        free.put(buffer)
                if not count:
                    break
                view = memoryview(buffer)[:count]
                offset = digest._advance(view)
                done = _Countdown(len(lanes), functools.partial(free.put, buffer))
                for lane in lanes:
                    lane.push(offset, view, done)
                if on_progress:
                    on_progress(count)
        finally:
            for _ in buffers:  # every buffer back in the pool: every lane has hashed every chunk
                free.get()
    if errors:
        raise errors[0]
