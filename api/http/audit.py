"""The audit log: one JSON line per write and per response that returned matches.

Lines name the key, the route and entry ids, list names, kinds and scores, never model titles,
notes, file names or URLs (they can name victims); digests and job ids are safe to keep.
`modelsieve serve` appends them to `--audit-log FILE` (default: stderr).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from modelsieve.api.http.routing import Call
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.api.http.state import AUDIT, METRICS

FLUSH_SECONDS = 0.2
FLUSH_BYTES = 64 * 1024


class AuditLog:
    """Audit lines appended to a file (or stderr), a batch at a time.

    Lines wait in memory for at most FLUSH_SECONDS (or until FLUSH_BYTES gather) and are then
    appended with one write (O_APPEND: several worker processes can share the file, lines stay
    whole). Writing line by line cost more than a lookup itself; the price is that a process
    killed with SIGKILL loses at most its last FLUSH_SECONDS of lines. `close()` writes the rest.
    """

    def __init__(self, destination: str | os.PathLike[str] | None) -> None:
        if destination is None:
            self._fd, self._owned = sys.stderr.fileno(), False
        else:
            try:
                self._fd, self._owned = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), True
            except OSError as exc:
                raise ModelsieveError(f"cannot open the audit log {destination}: {exc.strerror}") from None
        self._lines: list[str] = []
        self._size = 0
        self._scheduled: asyncio.TimerHandle | None = None

    def write(self, record: Mapping[str, Any]) -> None:
        """Queue one record as a JSON line; written at FLUSH_BYTES or after FLUSH_SECONDS."""
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write every queued line now, in one append."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        data = memoryview("".join(self._lines).encode("utf-8"))
        self._lines.clear()
        self._size = 0
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        """Write the rest and close the file (stderr stays open)."""
        self.flush()
        if self._owned:
            os.close(self._fd)


MATCH_FIELDS = ("entry_id", "list", "kind", "score", "status")


def audit(call: Call, event: str, **fields: Any) -> None:
    """Record one event by the calling key on the current route."""
    record = {
        "at": round(time.time(), 3),
        "event": event,
        "key": call.key.key_id if call.key else None,
        "route": f"{call.request.method} {call.request.match_info.route.resource.canonical}",  # type: ignore[union-attr]
        **fields,
    }
    call.app[AUDIT].write(record)


def audit_matches(call: Call, matches: Iterable[Mapping[str, Any]], **fields: Any) -> None:
    """Count the returned matches by kind and audit them (only their non-sensitive fields)."""
    kept = [{name: match.get(name) for name in MATCH_FIELDS if name in match} for match in matches]
    if not kept:
        return
    counter = call.app[METRICS].matches
    for match in kept:
        counter.labels(str(match.get("kind"))).inc()
    audit(call, "match", matches=kept, **fields)
