"""List exchange: signed delta bundles out and in, retractions of own entries, and opinions
(dispute / confirm) on entries.

Bundles are the store's own format (`hashlists.bundles`): signed JSON Lines, verified against the
trust store on import and applied in one transaction. They hold hashes, fingerprints and evidence
metadata only (never sensitive notes), so spooling them through a temporary file is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
import tempfile
import threading
from pathlib import Path

from aiohttp import web

from modelsieve.api.http.audit import audit
from modelsieve.api.http.errors import api_error
from modelsieve.api.http.routing import Call, Response, Route
from modelsieve.api.http.schemas import (
    BUNDLE_QUERY,
    ENTRY_PATH,
    IMPORT_REPORT,
    LIST_PATH,
    OPINION_BODY,
    OPINION_RESULT,
    RETRACT_BODY,
    RETRACT_RESULT,
)
from modelsieve.api.http.state import CONFIG, PUBLISHER_KEY, STORE
from modelsieve.api.http.validation import read_body
from modelsieve.hashlists.bundles import MAX_HEADER_LINE, Manifest, export_list, import_bundle
from modelsieve.hashlists.curation import confirm, dispute, retract
from modelsieve.hashlists.errors import InvalidEntryError

BUNDLE_MEDIA_TYPE = "application/x-ndjson"


@contextlib.contextmanager
def refused_by_state() -> Iterator[None]:
    """The store refusing a change its state forbids (retracted entry, someone else's list): 409."""
    try:
        yield
    except InvalidEntryError as exc:
        raise api_error(409, str(exc)) from None


async def export_bundle(call: Call) -> web.StreamResponse:
    """The list's changes after `since` as a signed bundle (entries and tombstones)."""
    key = call.app.get(PUBLISHER_KEY)
    if key is None:
        raise api_error(409, "this server has no publisher key to sign bundles with (modelsieve serve --publisher-key)")
    since = call.query.get("since", 0)
    spool = tempfile.TemporaryDirectory(prefix="modelsieve-bundle-")
    try:
        out = Path(spool.name) / "bundle.jsonl"
        with refused_by_state():
            manifest = await asyncio.to_thread(export_list, call.app[STORE], call.path["list"], key, out, since=since)
        audit(call, "export", list=call.path["list"], since=since, to_seq=manifest.to_seq, counts=manifest.counts)
        # streamed here, not a FileResponse: aiohttp prepares a returned FileResponse a second time,
        # and by then the spooled file is gone (an unhandled error and a dropped keep-alive connection)
        response = web.StreamResponse(headers={"Content-Type": BUNDLE_MEDIA_TYPE, "X-Bundle-To-Seq": str(manifest.to_seq)})
        response.content_length = out.stat().st_size
        await response.prepare(call.request)
        with open(out, "rb") as bundle:
            while chunk := await asyncio.to_thread(bundle.read, 1 << 20):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        spool.cleanup()


async def import_bundle_route(call: Call) -> web.Response:
    """Verify a signed bundle of this list and apply it in one transaction."""
    body = await read_body(call.request, call.app[CONFIG].bundle_body_limit)
    manifest = Manifest.from_line(body.split(b"\n", 1)[0][:MAX_HEADER_LINE])
    if manifest.type != "entries":  # opinions and background cohorts belong to no list: `modelsieve list import` takes them
        raise api_error(400, f"body: this route takes a list's entries bundle, not a bundle of {manifest.type} (import that with `modelsieve list import`)")
    if manifest.list != call.path["list"]:
        raise api_error(400, f"body: the bundle is for list {manifest.list!r}, not {call.path['list']!r}")
    descriptor, name = tempfile.mkstemp(prefix="modelsieve-bundle-", suffix=".jsonl")
    stop = threading.Event()  # set when this request is cancelled (timed out): the import then rolls back
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(body)
        report = await asyncio.to_thread(import_bundle, call.app[STORE], name, stopped=stop.is_set)
    except asyncio.CancelledError:
        stop.set()
        raise
    finally:
        os.unlink(name)
    record = report.to_json()
    audit(call, "import", **record)
    return web.json_response(record)


def _actor(call: Call) -> str:
    """Who made a change, as the store's event log records it: the key's name, else its id."""
    return call.key.name or call.key.key_id if call.key else "api"


async def retract_entry(call: Call) -> web.Response:
    """Retract an entry of this platform's own lists (a false positive): it stops matching at once."""
    with refused_by_state():
        entry = await asyncio.to_thread(retract, call.app[STORE], call.path["entry_id"], reason=call.body.get("reason", ""), actor=_actor(call))
    audit(call, "retract", entry_id=entry.id, list=entry.list, seq=entry.seq)
    return web.json_response({"entry_id": entry.id, "list": entry.list, "status": entry.status, "seq": entry.seq})


async def record_opinion(call: Call) -> web.Response:
    """Dispute (suspected false positive: still matches, flagged) or confirm an entry."""
    judge = dispute if call.body["opinion"] == "dispute" else confirm
    by = _actor(call)
    with refused_by_state():
        entry = await asyncio.to_thread(judge, call.app[STORE], call.path["entry_id"], reason=call.body.get("reason", ""), by=by)
    audit(call, "opinion", entry_id=entry.id, opinion=call.body["opinion"], status=entry.status)
    return web.json_response({"entry_id": entry.id, "opinion": call.body["opinion"], "status": entry.status})


ROUTES = (
    Route(
        "GET",
        "/v1/lists/{list}/bundle",
        export_bundle,
        "a signed delta bundle of a local list: its changes after sequence number `since`",
        "lists:read",
        "lists",
        {200: Response("the bundle (JSON Lines: manifest, signature, records)", {"type": "string"}, media_type=BUNDLE_MEDIA_TYPE),
         404: Response("no such list"), 409: Response("no publisher key configured, or the list was imported")},
        query=BUNDLE_QUERY,
        path_params=LIST_PATH,
        operation_id="export_bundle",
    ),
    Route(
        "POST",
        "/v1/lists/{list}/bundle",
        import_bundle_route,
        "import a signed bundle of this list (verified against the trust store, applied atomically)",
        "lists:write",
        "lists",
        {200: Response("what the import applied", IMPORT_REPORT)},
        path_params=LIST_PATH,
        stream_body="application/octet-stream",
        body_limit=lambda config: config.bundle_body_limit,
        timeout=lambda config: config.upload_timeout,  # up to 64 MiB applied in one transaction: upload time
        description="The body is the bundle file as exported (JSON Lines), sent as raw bytes. Refused with 422 and nothing applied when the bundle is unsigned, tampered with, from an "
        "unknown publisher, replayed or out of order.",
        operation_id="import_bundle",
    ),
    Route(
        "POST",
        "/v1/entries/{entry_id}/retract",
        retract_entry,
        "retract an entry of this platform's own lists (e.g. a false positive): it never matches again",
        "lists:write",
        "lists",
        {
            200: Response("the entry, retracted (retracting it again changes nothing)", RETRACT_RESULT),
            404: Response("no such entry"),
            409: Response("the entry was imported: only its publisher can retract it (dispute it instead)"),
        },
        path_params=ENTRY_PATH,
        body=RETRACT_BODY,
        description="Lookups and matches stop returning the entry as soon as this answers, on every server "
        "sharing the store; the retraction travels to importers as a tombstone in the list's next bundle.",
    ),
    Route(
        "POST",
        "/v1/entries/{entry_id}/opinion",
        record_opinion,
        "dispute or confirm a list entry (an imported entry's opinion can be exported to its publisher)",
        "lists:write",
        "lists",
        {200: Response("the entry's status now", OPINION_RESULT), 404: Response("no such entry"), 409: Response("the entry is retracted")},
        path_params=ENTRY_PATH,
        body=OPINION_BODY,
    ),
)
