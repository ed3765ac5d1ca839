"""Read what a verdict needs from a remote safetensors file, and as little else as possible.

With Range support: the first bytes (length prefix and, usually, the whole header), the rest of
the header if it is longer, then only the byte ranges of the tensors the fingerprint selects,
adjacent ranges coalesced into one request. The header is validated exactly as strictly as a
local file's (`readers.safetensors`), against the size the host states in Content-Range.

When the host ignores Range (200 instead of 206), or the file is not safetensors, the whole body
is streamed once under a size cap: every whole-file digest is computed on the way, and the
header and selected tensors are captured from the stream as they pass.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from yarl import URL

from modelsieve.crawler.fetch import FetchError, Fetcher, Response, Transcript, parse_content_range, range_header
from modelsieve.fingerprint.digests import DEFAULT_DIGESTS, MultiDigest
from modelsieve.fingerprint.dtypes import dtype_named
from modelsieve.fingerprint.errors import ModelFileError
from modelsieve.fingerprint.readers.base import TensorInfo
from modelsieve.fingerprint.readers.safetensors import SafetensorsHeader, TensorSpan, parse_header, read_header_length

_HASH_INLINE_BYTES = 1 << 20  # whole files up to this size are hashed on the event loop; larger ones in a thread

TensorSelector = Callable[[Sequence[TensorInfo], float], Sequence[TensorInfo]]
"""Which tensors a partial fingerprint needs, from all of a file's tensors and a budget (a fraction of
their bytes): `fuzzy.select_tensors`."""


@dataclass(frozen=True)
class RemoteReadConfig:
    """How much the remote reader may read, and how it groups ranges."""

    first_read: int = 32 * 1024  # the first request: length prefix and most LoRA headers (a checkpoint's needs one more)
    coalesce_gap: int = 64 * 1024  # ranges closer than this are fetched as one (fewer requests, few extra bytes)
    read_fraction: float = 0.05  # a ranged verdict reads at most this share of the file, header included
    max_selected_bytes: int = 512 * 1024 * 1024  # tensor bytes one verdict may ask for
    # Header bytes one check may hold and parse. The format allows 100 MB, and a host may claim that
    # much for every URL, at full check concurrency; image models' headers are well under 1 MiB.
    max_header_bytes: int = 8 * 1024 * 1024
    max_download_bytes: int = 16 * 1024**3  # whole-file fallback cap
    digest_names: tuple[str, ...] = DEFAULT_DIGESTS


@dataclass(frozen=True)
class RemoteContent:
    """What was read from a remote file: its header and selected tensors, or its whole-file digests."""

    final_url: str
    file_size: int | None
    ranged: bool  # True: judged from byte ranges; False: the whole body was streamed
    header: SafetensorsHeader | None  # None: not a valid safetensors file (see `problem`)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    digests: Mapping[str, str] = field(default_factory=dict)
    problem: str | None = None


def coalesce(ranges: Iterable[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Half-open byte ranges sorted and merged where they overlap or lie at most `gap` bytes apart."""
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and begin - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _array(span: TensorSpan, data: bytes | bytearray | memoryview) -> np.ndarray:
    dtype = dtype_named(span.info.dtype)
    if dtype.numpy is None:
        raise ModelFileError(f"tensor {span.info.name!r}: dtype {dtype.name} has no array view")
    array = np.frombuffer(data, dtype=dtype.numpy, count=span.info.numel).reshape(span.info.shape)
    array.flags.writeable = False
    return array


def header_length(first8: bytes, file_size: int | None, config: RemoteReadConfig) -> int:
    """The header length a file's first 8 bytes declare, refused (ModelFileError) beyond `config.max_header_bytes`."""
    length = read_header_length(first8, file_size)
    if length > config.max_header_bytes:
        raise ModelFileError(f"safetensors header of {length} bytes exceeds the crawler's cap of {config.max_header_bytes}: not parsed")
    return length


def selected_spans(header: SafetensorsHeader, select: TensorSelector, budget: float, limit: int) -> list[TensorSpan]:
    """The spans of the tensors `select` picks within `budget`, refusing selections larger than `limit` bytes."""
    by_name = {span.info.name: span for span in header.spans}
    chosen = select([s.info for s in header.spans], max(budget, 0.0))
    spans = [by_name[info.name] for info in chosen if info.name in by_name]
    total = sum(span.end - span.begin for span in spans)
    if total > limit:
        raise FetchError(f"the fingerprint asks for {total} tensor bytes, more than the cap of {limit}")
    return spans


class StreamCapture:
    """Watches a body stream in order: digests it, parses its header, keeps the selected tensors' bytes."""

    def __init__(self, select: TensorSelector, config: RemoteReadConfig) -> None:
        self._select = select
        self._config = config
        self.digest = MultiDigest(config.digest_names)
        self._head = bytearray()
        self._header_length: int | None = None
        self._header_bytes = b""
        self.header: SafetensorsHeader | None = None
        self.problem: str | None = None
        self._wanted: list[tuple[int, int, TensorSpan]] = []  # absolute [begin, end) and span
        self._starts: list[int] = []
        self._buffers: dict[str, bytearray] = {}

    @property
    def offset(self) -> int:
        return self.digest.size

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body: hash it, sniff the header, keep the bytes of wanted tensors."""
        offset = self.offset
        self.digest.update(chunk)
        if self.header is None and self.problem is None:
            self._sniff(chunk)
        elif self._wanted:
            self._keep(offset, chunk)

    def _sniff(self, chunk: bytes) -> None:
        self._head += chunk
        try:
            if self._header_length is None and len(self._head) >= 8:
                self._header_length = header_length(bytes(self._head[:8]), None, self._config)
            if self._header_length is not None and len(self._head) >= 8 + self._header_length:
                self._header_bytes = bytes(self._head[8 : 8 + self._header_length])
                self.header = parse_header(self._header_bytes)
                config = self._config
                spans = selected_spans(self.header, self._select, config.read_fraction, config.max_selected_bytes)
                start = self.header.data_start
                self._wanted = sorted((start + s.begin, start + s.end, s) for s in spans)
                self._starts = [w[0] for w in self._wanted]
                self._buffers = {s.info.name: bytearray() for s in spans}
                self._keep(0, bytes(self._head))
                self._head = bytearray()
        except ModelFileError as exc:
            self.problem = str(exc)
            self._head = bytearray()

    def _keep(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        index = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        for begin, stop, span in self._wanted[index:]:
            if begin >= end:
                break
            low, high = max(begin, offset), min(stop, end)
            if low < high:
                self._buffers[span.info.name] += chunk[low - offset : high - offset]

    def result(self, final_url: URL) -> RemoteContent:
        """What the whole stream showed: digests, the header re-checked against the final size, wanted tensors."""
        size = self.offset
        digests = _defined(self.digest)
        header, problem = self.header, self.problem
        if header is not None:
            try:
                parse_header(self._header_bytes, size)  # now that the size is known: exactly the local checks
            except ModelFileError as exc:
                header, problem = None, str(exc)
        elif problem is None:
            problem = f"truncated safetensors file: the body ended after {size} bytes, inside the header"
        arrays = {}
        if header is not None:
            for _, _, span in self._wanted:
                arrays[span.info.name] = _array(span, self._buffers[span.info.name])
        return RemoteContent(str(final_url), size, False, header, arrays, digests, problem)


async def _download(response: Response, select: TensorSelector, config: RemoteReadConfig) -> RemoteContent:
    """Stream an open response once (capped), capturing digests, header and selected tensors.

    A capture may hold up to max_selected_bytes of tensors: callers hold one of their tensor slots
    around it, taken BEFORE the request (or free at once): waiting for a slot while holding the
    request's host and global slots could deadlock with a ranged read holding a tensor slot and
    waiting for a request slot.
    """
    declared = response.content_length
    if declared is not None and declared > config.max_download_bytes:
        raise FetchError(f"{response.url}: {declared} bytes exceed the download cap of {config.max_download_bytes}")
    capture = StreamCapture(select, config)
    async for chunk in response.chunks():
        if response.bytes_read > config.max_download_bytes:
            raise FetchError(f"{response.url}: the body exceeds the download cap of {config.max_download_bytes} bytes")
        capture.feed(chunk)
    return capture.result(response.url)


async def download(
    fetcher: Fetcher,
    url: str | URL,
    transcript: Transcript,
    select: TensorSelector,
    config: RemoteReadConfig = RemoteReadConfig(),
    *,
    capture_slots: asyncio.Semaphore | None = None,
) -> RemoteContent:
    """Stream the whole file once (capped): whole-file digests plus header and selected tensors if safetensors.

    With `capture_slots`, the download holds one slot, taken before the request, while it captures
    tensors (a memory bound).
    """
    async with capture_slots or contextlib.nullcontext(), fetcher.open(url, transcript=transcript) as response:
        _expect_status(response, (200,))
        return await _download(response, select, config)


def _expect_status(response: Response, allowed: tuple[int, ...]) -> None:
    if response.status not in allowed:
        raise FetchError(f"{response.url}: HTTP status {response.status}")


async def _read_range(
    fetcher: Fetcher, url: URL, transcript: Transcript, first: int, last: int, file_size: int
) -> bytes:
    """Bytes first..last (inclusive) of a file the host has shown to serve ranges; FetchError otherwise."""
    async with fetcher.open(url, transcript=transcript, headers={"Range": range_header(first, last)}) as response:
        if response.status != 206:
            raise FetchError(f"{response.url}: asked for bytes {first}-{last}, got status {response.status}")
        got = parse_content_range(response.headers.get("Content-Range"))
        if got != (first, last, file_size):
            raise FetchError(f"{response.url}: asked for bytes {first}-{last}/{file_size}, got {got[0]}-{got[1]}/{got[2]}")
        body = await response.read(last - first + 1)
    if len(body) != last - first + 1:
        raise FetchError(f"{url}: truncated range: {len(body)} of {last - first + 1} bytes")
    return body


@dataclass(frozen=True)
class RemoteHead:
    """A remote safetensors file whose header has been read and validated, and the bytes read so far."""

    final_url: URL
    file_size: int
    header: SafetensorsHeader
    head: bytes  # bytes [0, len(head)) of the file: length prefix, header, maybe some data

    def selected_spans(self, select: TensorSelector, config: RemoteReadConfig) -> list[TensorSpan]:
        """The tensors to read: the budget is what `read_fraction` leaves after the bytes already read."""
        data = max(self.header.data_length, 1)
        budget = (config.read_fraction * self.file_size - len(self.head)) / data
        return selected_spans(self.header, select, budget, config.max_selected_bytes)


async def read_head(
    fetcher: Fetcher,
    url: str | URL,
    transcript: Transcript,
    select: TensorSelector,
    config: RemoteReadConfig = RemoteReadConfig(),
    *,
    capture_slots: asyncio.Semaphore | None = None,
) -> RemoteHead | RemoteContent:
    """The validated header of a remote safetensors file by Range — or, when the host ignores Range or
    the file is not valid safetensors, the finished result of one whole streamed download (holding
    one of `capture_slots`, if given, while it runs)."""
    async with fetcher.open(url, transcript=transcript, headers={"Range": range_header(0, config.first_read - 1)}) as response:
        final_url = response.url
        if response.status == 200:  # the host ignores Range: one streamed pass does everything
            if capture_slots is None:
                return await _download(response, select, config)
            if not capture_slots.locked():  # a free slot is taken at once: no await before it is held
                async with capture_slots:
                    return await _download(response, select, config)
            head = None  # no free slot: never wait for one holding this request's slots (see _download)
        else:
            if response.status == 416:  # an empty file has no byte 0
                raise FetchError(f"{response.url}: the file is empty (416 for bytes 0-{config.first_read - 1})")
            _expect_status(response, (206,))
            first, last, file_size = parse_content_range(response.headers.get("Content-Range"))
            if first != 0 or file_size is None or last != min(config.first_read, file_size) - 1:
                raise FetchError(f"{response.url}: unusable Content-Range {response.headers.get('Content-Range')!r}")
            head = await response.read(last + 1)
    if head is None:  # ask again for the whole file, holding a tensor slot from before the request
        return await download(fetcher, final_url, transcript, select, config, capture_slots=capture_slots)
    assert file_size is not None  # a head was read: its Content-Range gave the size (checked above)
    if len(head) != last + 1:
        raise FetchError(f"{final_url}: truncated range: {len(head)} of {last + 1} bytes")
    try:
        length = header_length(head[:8], file_size, config)
        if 8 + length > len(head):
            head += await _read_range(fetcher, final_url, transcript, len(head), 8 + length - 1, file_size)
        header = parse_header(head[8 : 8 + length], file_size)
    except ModelFileError:
        # Not (valid) safetensors as far as the ranges show: the one streamed pass is authoritative
        # (whole-file digests, and the header and tensors if the stream itself is valid).
        return await download(fetcher, final_url, transcript, select, config, capture_slots=capture_slots)
    return RemoteHead(final_url, file_size, header, head)


async def read_tensors(
    fetcher: Fetcher,
    remote: RemoteHead,
    transcript: Transcript,
    spans: Sequence[TensorSpan],
    config: RemoteReadConfig = RemoteReadConfig(),
) -> RemoteContent:
    """The given tensors of a file whose header was read, by Range, adjacent ranges coalesced.

    When the bytes read cover the whole file (a small LoRA's fingerprint asks for every tensor),
    its whole-file digests are computed too, so an entry listed by digest alone still matches.
    """
    head, start = remote.head, remote.header.data_start
    arrays: dict[str, np.ndarray] = {}
    in_order: list[memoryview] = [memoryview(head)]  # bytes [0, covered) of the file, in order
    covered = len(head)
    for begin, end in coalesce(((s.begin, s.end) for s in spans), config.coalesce_gap):
        absolute = start + begin
        if absolute + (end - begin) <= len(head):  # already in the first answer
            block = head[absolute : absolute + end - begin]
        else:
            block = await _read_range(fetcher, remote.final_url, transcript, absolute, start + end - 1, remote.file_size)
        view = memoryview(block)
        if absolute <= covered < start + end:
            in_order.append(view[covered - absolute :])
            covered = start + end
        for span in spans:
            if begin <= span.begin and span.end <= end:
                arrays[span.info.name] = _array(span, view[span.begin - begin : span.end - begin])
    digests: dict[str, str] = {}
    if covered == remote.file_size:
        if covered <= _HASH_INLINE_BYTES:
            digests = _whole_digests(in_order, config)
        else:  # keep the event loop free for the other checks
            digests = await asyncio.to_thread(_whole_digests, in_order, config)
    return RemoteContent(str(remote.final_url), remote.file_size, True, remote.header, arrays, digests)


async def read_remote(
    fetcher: Fetcher,
    url: str | URL,
    transcript: Transcript,
    select: TensorSelector,
    config: RemoteReadConfig = RemoteReadConfig(),
    *,
    capture_slots: asyncio.Semaphore | None = None,
) -> RemoteContent:
    """Header and selected tensors of a remote safetensors file by Range, else a whole streamed download."""
    first = await read_head(fetcher, url, transcript, select, config, capture_slots=capture_slots)
    if isinstance(first, RemoteContent):
        return first
    return await read_tensors(fetcher, first, transcript, first.selected_spans(select, config), config)


def _whole_digests(pieces: Iterable[bytes | memoryview], config: RemoteReadConfig) -> dict[str, str]:
    """The whole-file digests of a file given as its consecutive pieces."""
    digest = MultiDigest(config.digest_names)
    for piece in pieces:
        digest.update(piece)
    return _defined(digest)


def _defined(digest: MultiDigest) -> dict[str, str]:
    """The digests that are defined for the bytes seen (AutoV1 needs 2 MiB, AutoV3 safetensors)."""
    return {name: value for name, value in digest.hexdigests().items() if value is not None}
