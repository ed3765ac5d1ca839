"""An ingest backlog matched on a Dask cluster: model files on shared storage, in chunks, one task each.

A hub re-checking its catalogue after a list update hands over file paths; each task matches one
chunk with its worker's snapshot of the lists (`cluster.ListSnapshot`, loaded once per worker)
and returns the results; a file that cannot be read is a failure of that file, never of the chunk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from modelsieve.crawler.cluster import snapshot_on_cluster, worker_lookup
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.model import MatchResult


@dataclass(frozen=True)
class FileOutcome:
    """The match result of one file, or why it could not be matched."""

    path: str
    result: MatchResult | None = None
    error: str | None = None


def match_chunk(paths: Sequence[str], lists: str) -> list[FileOutcome]:
    """Dask task: match each file of a chunk against the worker's snapshot of the lists."""
    matcher = worker_lookup(lists).matcher
    outcomes = []
    for path in paths:
        try:
            outcomes.append(FileOutcome(path, matcher.match_path(path)))
        except (ModelsieveError, OSError) as exc:
            outcomes.append(FileOutcome(path, error=" ".join(str(exc).split())))
    return outcomes


def match_on_cluster(
    client: Any, paths: Sequence[str | os.PathLike[str]], *, store_location: str, fingerprint_key: str | None = None, chunk: int = 16
) -> Iterator[list[FileOutcome]]:
    """Outcomes chunk by chunk, in completion order (feed a progress bar with each chunk's length)."""
    from distributed import as_completed

    lists = snapshot_on_cluster(client, store_location, fingerprint_key)
    names = [os.path.abspath(p) for p in paths]
    futures = [client.submit(match_chunk, names[i : i + chunk], lists, pure=False) for i in range(0, len(names), chunk)]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
