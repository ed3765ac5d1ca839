"""`modelsieve serve`: run the HTTP API, in one process or in N worker processes sharing the port."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from modelsieve.api.cli.common import add_db_option, command_parser, non_negative_int, positive_int, positive_number
from modelsieve.api.http import ApiConfig, create_app
from modelsieve.api.http.metrics import MULTIPROCESS_ENV
from modelsieve.api.http.serving import serve
from modelsieve.fingerprint.errors import ModelsieveError

SHUTDOWN_SECONDS = 10.0  # on SIGTERM / SIGINT, how long requests in flight may take to finish

EXAMPLES = """\
examples:
  modelsieve keys api create --scope lookup            # prints a key once
  modelsieve serve                                     # http://127.0.0.1:8080, one process
  modelsieve serve --workers 2 --db lists.db --audit-log audit.jsonl
  curl -H "Authorization: Bearer $KEY" "http://127.0.0.1:8080/v1/lookup?sha256=..."

Routes, scopes and limits: GET /v1/openapi.json (any key), or the README's "HTTP API" section.
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "serve",
        "run the HTTP API",
        "Serve the HTTP API (JSON under /v1, Prometheus metrics at /metrics) on the store.\n"
        "Binds to 127.0.0.1 unless told otherwise; every route but /v1/healthz and /v1/readyz\n"
        "needs an API key (`modelsieve keys api create`). SIGTERM or SIGINT stops it cleanly.\n"
        "With --workers N, N processes share the port (SO_REUSEPORT) and the kernel spreads\n"
        "connections over them; rate limits then hold per process.",
        EXAMPLES,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=8080, help="TCP port (default 8080; 0 picks a free one, one worker only)")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N", help="server processes sharing the port (default 1)")
    parser.add_argument("--rate", type=positive_number, default=ApiConfig.rate_per_second, metavar="PER_SECOND", help="default per-key request rate (default %(default)s)")
    parser.add_argument("--burst", type=positive_int, default=ApiConfig.rate_burst, help="requests a key may make at once before the rate applies (default %(default)s)")
    parser.add_argument("--audit-log", metavar="FILE", default=None, help="append audit lines (JSON) to FILE instead of stderr")
    parser.add_argument("--publisher-key", metavar="FILE", default=None, help="Ed25519 private key (`modelsieve keys generate`) that signs exported bundles")
    parser.add_argument("--fingerprint-key", metavar="FILE", default=None, help="fingerprint key file (default: $MODELSIEVE_FINGERPRINT_KEY or the public key)")
    parser.add_argument(
        "--crawl-jobs",
        type=non_negative_int,
        default=ApiConfig.crawl_jobs_per_process,
        metavar="N",
        help="crawl jobs each process runs at once (default %(default)s; 0: only accept jobs, other servers run them)",
    )
    parser.add_argument(
        "--crawl-jobs-per-key",
        type=positive_int,
        default=ApiConfig.crawl_jobs_per_key,
        metavar="N",
        help="crawl jobs one API key may have queued or running at once; more are refused with 429 (default %(default)s)",
    )
    parser.add_argument(
        "--crawl-jobs-dir",
        metavar="DIR",
        default=None,
        help="folder for API crawl jobs' input and output files (default: beside a SQLite store, "
        "STORE.crawl-jobs/; with a PostgreSQL store ~/.local/share/modelsieve/crawl-jobs/). Replicas "
        "sharing a PostgreSQL store must share this folder (e.g. a network mount), so any replica can "
        "resume a job and page its recommendations",
    )
    parser.add_argument(
        "--crawl-allow-loopback",
        action="store_true",
        help="let crawl jobs fetch from 127.0.0.0/8 and ::1 (local test hosts and the demo only)",
    )
    add_db_option(parser)
    parser.set_defaults(handler=run)


def _port(text: str) -> int:
    """A TCP port number for argparse: 0-65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {port}")
    return port


def run(args: argparse.Namespace) -> int:
    config = api_config(args)
    if args.workers == 1:
        serve_process(config, args.host, args.port, reuse_port=False)
        return 0
    return _supervise(config, args.host, args.port, args.workers)


def api_config(args: argparse.Namespace) -> ApiConfig:
    """The server settings `serve`'s options ask for (ModelsieveError for an impossible combination)."""
    if args.workers < 1 or args.crawl_jobs < 0:
        raise ModelsieveError("--workers must be at least 1 and --crawl-jobs at least 0")
    if args.workers > 1 and args.port == 0:
        raise ModelsieveError("--port 0 works with one worker only (each worker would pick its own port)")
    return ApiConfig(
        db_path=args.db,
        publisher_key_path=args.publisher_key,
        fingerprint_key_path=args.fingerprint_key,
        rate_per_second=args.rate,
        rate_burst=args.burst,
        crawl_allow_loopback=args.crawl_allow_loopback,
        crawl_jobs_per_process=args.crawl_jobs,
        crawl_jobs_per_key=args.crawl_jobs_per_key,
        crawl_jobs_dir=args.crawl_jobs_dir,
        audit_log=args.audit_log,
    )


def serve_process(config: ApiConfig, host: str, port: int, *, reuse_port: bool) -> None:
    """Run one server process until SIGTERM or SIGINT, then shut down cleanly: requests in flight
    (uploads still arriving included) get up to SHUTDOWN_SECONDS to finish (`serving.serve`).

    An address that cannot be bound (in use, unknown host) is a ModelsieveError naming it."""
    logging.basicConfig(level=logging.WARNING, format="modelsieve: %(message)s")

    def announce(text: str) -> None:
        print(f"modelsieve: pid {os.getpid()}: {text}", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(create_app(config), host, port, reuse_port=reuse_port, grace=SHUTDOWN_SECONDS, announce=announce))
    except OSError as exc:  # from binding: the store, key and log files fail with ModelsieveErrors of their own
        raise ModelsieveError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def _serve_worker(config: ApiConfig, host: str, port: int) -> None:
    """One of `--workers N` processes: a ModelsieveError is one line on stderr and exit status 2."""
    try:
        serve_process(config, host, port, reuse_port=True)
    except ModelsieveError as exc:
        print(f"modelsieve: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def _supervise(config: ApiConfig, host: str, port: int, workers: int) -> int:
    """Start `workers` processes on one port; stop all when signalled or when any of them dies
    (then the status is 2: the server could not go on, e.g. the port was taken)."""
    metrics_dir = tempfile.mkdtemp(prefix="modelsieve-metrics-")
    os.environ[MULTIPROCESS_ENV] = metrics_dir  # inherited by the spawned workers only
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_serve_worker, args=(config, host, port), name=f"worker-{n}")
        for n in range(workers)
    ]
    signalled = False

    def stop_workers() -> None:
        for process in processes:
            if process.pid and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        nonlocal signalled
        signalled = True
        stop_workers()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        multiprocessing.connection.wait([p.sentinel for p in processes])
        if not signalled:
            stop_workers()
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(MULTIPROCESS_ENV, None)
    return 0 if signalled else 2
