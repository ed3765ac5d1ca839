"""Exact lookups and matches: by digest, by URL, by a client-side fingerprint, by an uploaded file.

Every answer is `{"verdict": "exact" | "near" | "none", "matches": [...]}` plus what was
computed; match objects are the CLI's `--json` ones (`Match.to_json`). "none" means that no
list matched, never that the file is harmless.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelsieve.api.http.audit import audit_matches
from modelsieve.api.http.errors import api_error
from modelsieve.api.http.offload import off_loop
from modelsieve.api.http.routing import Call, Response, Route
from modelsieve.api.http.schemas import (
    FILE_MATCH_RESULT,
    FINGERPRINT_BODY,
    FINGERPRINT_MATCH_RESULT,
    LOOKUP_QUERY,
    LOOKUP_RESULT,
    URL_LOOKUP_QUERY,
    URL_LOOKUP_RESULT,
)
from modelsieve.api.http.state import CONFIG, UPLOAD_SLOTS, loaded_matcher
from modelsieve.api.http.upload import capture_upload, match_upload
from modelsieve.fingerprint.digests import printed_digest
from modelsieve.fingerprint.fuzzy import Fingerprint
from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import Match, MatchResult


def answer(call: Call, result: MatchResult, **computed: Any) -> web.Response:
    """The JSON answer for a subject's matches; counted and audited by kind, entry and score."""
    record = result.to_json()
    audit_matches(call, record["matches"], **{k: v for k, v in computed.items() if k == "digests"})
    return web.json_response({**computed, "verdict": record["verdict"], "matches": record["matches"]})


async def lookup(call: Call) -> web.Response:
    """Entries listing any of the given digests (AutoV3 also by its 12-hex prefix)."""
    digests = {name: printed_digest(name, value) for name, value in call.query.items()}
    matches = loaded_matcher(call.app).match_digests(digests)
    return answer(call, MatchResult("lookup", tuple(matches)), digests=digests)


async def lookup_url(call: Call) -> web.Response:
    """URL entries covering the URL (itself or a parent path) and domain entries of its host or a
    parent domain: what a delisting job asks before it crawls anything. The URL is never fetched."""
    url = call.query["url"]
    try:
        matches = loaded_matcher(call.app).match_url(url)
    except InvalidEntryError as exc:
        raise api_error(400, f"query.url: {exc}") from None
    return answer(call, MatchResult(url, tuple(matches)), url=url)


def _parse_and_match(matcher: Matcher, fingerprint_json: dict[str, Any]) -> tuple[Fingerprint, list[Match]]:
    fingerprint = Fingerprint.from_json(fingerprint_json)
    return fingerprint, matcher.match_fingerprint(fingerprint)


async def match_fingerprint(call: Call) -> web.Response:
    """Listed models near a fingerprint the client computed (`Fingerprint.to_json()`); decoded and
    matched on the CPU pool (a fingerprint body may be 16 MiB)."""
    fingerprint, matches = await off_loop(call.app, _parse_and_match, loaded_matcher(call.app), call.body["fingerprint"])
    summary = {"kind": fingerprint.kind, "base": fingerprint.base, "tensors": len(fingerprint.sketches)}
    return answer(call, MatchResult("fingerprint", tuple(matches)), fingerprint=summary)


async def match_file(call: Call) -> web.Response:
    """A model file streamed in the body: digests and partial fingerprint computed on the way."""
    config = call.app[CONFIG]
    matcher = loaded_matcher(call.app)
    if call.request.content_length is not None and call.request.content_length > config.upload_limit:
        raise api_error(413, f"upload of {call.request.content_length} bytes exceeds the limit of {config.upload_limit}")
    slots = call.app[UPLOAD_SLOTS]
    if slots.locked():
        raise api_error(503, "too many uploads in progress; retry shortly", headers={"Retry-After": "5"})
    async with slots:
        content = await capture_upload(
            call.app, call.request.content.iter_chunked(256 * 1024), config.upload_limit, config.upload_memory_limit,
            min_rate=config.upload_min_rate, grace=config.upload_grace_seconds,
        )
        evidence, result = await off_loop(call.app, match_upload, content, matcher)
    return answer(
        call,
        result,
        size=content.file_size,
        format="safetensors" if content.header is not None else "other",
        digests=evidence.digests,
        fingerprinted=evidence.fingerprint is not None,
        problems=list(result.problems),
    )


ROUTES = (
    Route(
        "GET",
        "/v1/lookup",
        lookup,
        "exact lookup by one or more digests (sha256, blake3, md5, sha1, crc32, autov1, autov2, autov3)",
        "lookup",
        "match",
        {200: Response("the matches (verdict `none`: no list matched)", LOOKUP_RESULT)},
        query=LOOKUP_QUERY,
    ),
    Route(
        "GET",
        "/v1/lookup/url",
        lookup_url,
        "look a URL up in the URL and domain lists (nudify services); the URL is never fetched",
        "lookup",
        "match",
        {200: Response("the matches (kind `url` or `domain`; verdict `none`: no list matched)", URL_LOOKUP_RESULT)},
        query=URL_LOOKUP_QUERY,
    ),
    Route(
        "POST",
        "/v1/match/fingerprint",
        match_fingerprint,
        "match a fingerprint computed client-side (no upload of the model)",
        "lookup",
        "match",
        {200: Response("the matches", FINGERPRINT_MATCH_RESULT)},
        body=FINGERPRINT_BODY,
        body_limit=lambda config: config.fingerprint_body_limit,
    ),
    Route(
        "POST",
        "/v1/match/file",
        match_file,
        "match an uploaded model file, hashed and fingerprinted while it streams (never stored)",
        "lookup",
        "match",
        {200: Response("digests, what could be fingerprinted, and the matches", FILE_MATCH_RESULT),
         408: Response("the upload fell behind the minimum rate (64 KiB/s after its first 10 s by default)")},
        stream_body="application/octet-stream",
        timeout=lambda config: config.upload_timeout,
        description="Send the raw file as the body. Safetensors files are fingerprinted from the tensors a "
        "partial fingerprint selects; other formats get digests only. Nothing is written to disk.",
    ),
)
