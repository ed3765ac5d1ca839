"""Uploaded model files: hashed and fingerprinted while they stream, never written to disk.

Every whole-file digest is computed chunk by chunk as the body arrives. For a safetensors file
the header is parsed as soon as it has passed, and only the bytes of the tensors a partial
fingerprint needs (`fuzzy.select_tensors`: a few per cent of a checkpoint, all of a LoRA) are
kept, in memory, up to `upload_memory_limit`; everything else is hashed and dropped. So nothing
of an upload ever reaches the disk (no temporary file, encrypted or not) and nothing is kept
after the response. Pickle-based files are never parsed: they get digests only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from yarl import URL

from modelsieve.api.http.errors import api_error
from modelsieve.api.http.offload import off_loop
from modelsieve.crawler.safetensors_remote import RemoteContent, RemoteReadConfig, StreamCapture
from modelsieve.fingerprint.digests import DIGEST_NAMES
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import fingerprint_tensors, select_tensors
from modelsieve.hashlists.files import FileEvidence
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import MatchResult

HASH_BLOCK = 4 * 1024 * 1024  # bytes handed to a hashing thread at once: few hand-offs, bounded memory
UPLOAD_SUBJECT = URL("upload:file")


async def capture_upload(
    app: web.Application, chunks: AsyncIterator[bytes], size_limit: int, memory_limit: int, *, min_rate: float, grace: float
) -> RemoteContent:
    """Digests, header and selected tensors of an upload stream; 413 once it passes `size_limit`.

    Hashing runs on the CPU pool (hashlib and blake3 release the GIL), one block at a time and
    in order, so the event loop keeps serving other requests while a large upload streams.
    After its first `grace` seconds an upload must keep up an average of `min_rate` bytes a
    second (time spent hashing here not counted), else 408: a client dripping bytes would
    otherwise hold one of the few upload slots until the upload timeout.
    """
    limits = RemoteReadConfig(max_selected_bytes=memory_limit, max_download_bytes=size_limit, digest_names=DIGEST_NAMES)
    capture = StreamCapture(select_tensors, limits)
    loop = asyncio.get_running_loop()
    clock_start = loop.time()  # moved forward by the time spent hashing
    block = bytearray()
    received = 0
    stream = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout_at(clock_start + grace + received / min_rate):  # when these bytes stop being enough
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise api_error(408, f"upload slower than {min_rate:g} bytes a second: send it faster or retry on a better link") from None
        received += len(chunk)
        if received > size_limit:
            raise api_error(413, f"upload exceeds the limit of {size_limit} bytes")
        block += chunk
        if len(block) >= HASH_BLOCK:
            hashing = loop.time()
            await off_loop(app, capture.feed, bytes(block))
            clock_start += loop.time() - hashing
            block.clear()
    if block:
        await off_loop(app, capture.feed, bytes(block))
    if received == 0:
        raise api_error(400, "body: the upload is empty")
    return capture.result(UPLOAD_SUBJECT)


def upload_evidence(content: RemoteContent, matcher: Matcher) -> FileEvidence:
    """The upload's digests and, from the captured tensors, its partial fingerprint (or why none),
    taken with the matcher's key and bases like every other file the lists are matched against."""
    if content.header is None:
        return FileEvidence("upload", dict(content.digests), None, f"not fingerprinted: {content.problem}")
    try:
        fingerprint = fingerprint_tensors(content.arrays, matcher.fingerprint_key, matcher.bases)
    except ModelsieveError as exc:
        return FileEvidence("upload", dict(content.digests), None, f"not fingerprinted: {exc}")
    return FileEvidence("upload", dict(content.digests), fingerprint)


def match_upload(content: RemoteContent, matcher: Matcher) -> tuple[FileEvidence, MatchResult]:
    """The upload's evidence (`upload_evidence`) and what it matches: CPU-bound, for the CPU pool."""
    evidence = upload_evidence(content, matcher)
    return evidence, matcher.match_evidence(evidence)
