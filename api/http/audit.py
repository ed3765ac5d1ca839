"""The audit log: one JSON line per write and per response that returned matches.

Lines name the key, the route and entry ids, list names, kinds and scores, never model titles,
notes, file names or URLs (they can name victims); digests and job ids are safe to keep.
`modelsieve serve` sends the `modelsieve.audit` logger to stderr or to `--audit-log FILE`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import time
from collections.abc import Iterable, Mapping
from typing import Any

from modelsieve.api.http.routing import Call
from modelsieve.api.http.state import METRICS

audit_log = logging.getLogger("modelsieve.audit")

MATCH_FIELDS = ("entry_id", "list", "kind", "score", "status")


def audit(call: Call, event: str, **fields: Any) -> None:
    """Record one event by the calling key on the current route."""
    if not audit_log.isEnabledFor(logging.INFO):
        return
    record = {
        "at": round(time.time(), 3),
        "event": event,
        "key": call.key.key_id if call.key else None,
        "route": f"{call.request.method} {call.request.match_info.route.resource.canonical}",  # type: ignore[union-attr]
        **fields,
    }
    audit_log.info(json.dumps(record, separators=(",", ":"), default=str))


def audit_matches(call: Call, matches: Iterable[Mapping[str, Any]], **fields: Any) -> None:
    """Count the returned matches by kind and audit them (only their non-sensitive fields)."""
    kept = [{name: match.get(name) for name in MATCH_FIELDS if name in match} for match in matches]
    if not kept:
        return
    counter = call.app[METRICS].matches
    for match in kept:
        counter.labels(str(match.get("kind"))).inc()
    audit(call, "match", matches=kept, **fields)


def configure(destination: str | None) -> logging.handlers.QueueListener:
    """Send audit lines to a file (appended) or, with None, to stderr; plain lines, no prefixes.

    Lines are written by a background thread, so the event loop never waits for the disk; stop
    the returned listener at shutdown to write out what is queued.
    """
    handler: logging.Handler = logging.FileHandler(destination, encoding="utf-8") if destination else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    audit_log.handlers[:] = [logging.handlers.QueueHandler(lines)]
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False
    listener = logging.handlers.QueueListener(lines, handler)
    listener.start()
    return listener
