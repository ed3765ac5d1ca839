"""Batch jobs on Dask distributed: reaching (or starting) a cluster, and the lists each worker loads once.

`dask_client` gives a Client on an existing scheduler (`tcp://HOST:PORT`) or on a LocalCluster of
worker processes started for the job. `ListSnapshot` is a worker plugin: each worker opens the
store and builds the matcher's indexes once, when it joins (restarted workers included), under a
name carrying the store's sequence number, so tasks of one job all judge against the same lists.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

from modelsieve.crawler.lookup import StoreLookup
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import load_key
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.store import Store, is_postgres_location, open_store

try:
    from distributed import Client, LocalCluster, WorkerPlugin, get_worker
except ImportError:  # the `distributed` extra is not installed: dask_client says so
    Client = LocalCluster = get_worker = None  # type: ignore[assignment,misc]
    WorkerPlugin = object  # type: ignore[assignment,misc]


class ClusterError(ModelsieveError):
    """The Dask cluster cannot be reached or started, or lost a task beyond its retries."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


@contextlib.contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None, connect_timeout: float = 5.0) -> Iterator[Any]:
    """A Client on `scheduler`, else on a LocalCluster of `workers` single-threaded worker processes."""
    if Client is None:
        raise ClusterError("--workers and --scheduler need Dask distributed: pip install 'modelsieve[distributed]'")
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from None
        with client:
            yield client
        return
    cluster = LocalCluster(
        n_workers=workers or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    with cluster, Client(cluster) as client:
        yield client


def store_location(db: str | os.PathLike[str] | None) -> str:
    """The store a job's workers open: the --db value, $MODELSIEVE_DB, or the default file, as an
    absolute path (workers may start in another folder)."""
    from modelsieve.hashlists.db import DB_ENV, default_db_path

    location = os.fspath(db) if db is not None else os.environ.get(DB_ENV) or str(default_db_path())
    return location if is_postgres_location(location) else os.path.abspath(location)


class ListSnapshot(WorkerPlugin):
    """Worker plugin: the store's lists, indexed once per worker process (see the module docstring)."""

    def __init__(self, location: str, seq: int, fingerprint_key: str | None = None) -> None:
        self.name = f"modelsieve-lists-{seq}"
        self.location, self.seq, self.fingerprint_key = location, seq, fingerprint_key
        self.store: Store | None = None
        self.lookup: StoreLookup | None = None
        self.loads = 0

    def setup(self, worker: Any) -> None:
        key = load_key(self.fingerprint_key)
        self.store = open_store(self.location)
        # The indexes stay at the job's snapshot; index hits are still confirmed against the store,
        # so an entry retracted during the job stops matching.
        self.lookup = StoreLookup(Matcher.for_store(self.store, key, refresh_interval=math.inf))
        self.loads += 1

    def teardown(self, worker: Any) -> None:
        if self.store is not None:
            self.store.close()


def snapshot_on_cluster(client: Any, location: str, fingerprint_key: str | None = None) -> str:
    """Register the store's current lists with every worker (present and future); returns the plugin name."""
    with open_store(location, existing=True) as store:  # a missing store has no lists: never answer "none" from one
        seq = store.last_seq()
    plugin = ListSnapshot(location, seq, fingerprint_key)
    client.register_plugin(plugin, name=plugin.name)
    return plugin.name


def worker_lookup(plugin_name: str) -> StoreLookup:
    """Inside a task: this worker's lookup over the job's snapshot of the lists."""
    plugin = get_worker().plugins[plugin_name]
    assert isinstance(plugin, ListSnapshot) and plugin.lookup is not None
    return plugin.lookup
