"""`modelsieve crawl`: check hosted links against the lists and write recommendations with evidence."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from modelsieve.api.cli.cluster_options import add_cluster_options, on_cluster, run_crawl_on_cluster
from modelsieve.api.cli.common import (
    add_db_option,
    add_json_flag,
    command_parser,
    non_negative_int,
    positive_int,
    positive_number,
    print_json_line,
    progress_bar,
)
from modelsieve.crawler.crawl import CrawlConfig, Crawler
from modelsieve.crawler.fetch import FetchConfig
from modelsieve.crawler.inputs import BadLine, bounded_lines, read_targets
from modelsieve.crawler.job import CrawlJob
from modelsieve.crawler.lookup import StoreLookup
from modelsieve.crawler.model import CrawlTarget, Recommendation
from modelsieve.crawler.netguard import AddressPolicy
from modelsieve.crawler.policy import PolicyConfig
from modelsieve.crawler.politeness import PolitenessConfig
from modelsieve.crawler.safetensors_remote import RemoteReadConfig
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import load_key
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.parsers import UTF16_MARKS
from modelsieve.hashlists.store import open_store

_SNIFF_BYTES = 64 * 1024  # how much of the URL file is checked for binary content before the job starts

DESCRIPTION = """\
Check hosted links (model files, model pages, services) against the lists in the store and
write one recommendation per URL, with its evidence, to a JSON Lines file:

  {"url", "final_url", "action", "reason", "evidence": {...}, "checked_at"}

action: delist (search mode) or takedown (host mode) for exact or strong near matches of
category 2c and listed nudify services; review for weaker matches, disputed entries and
categories 1/2a/2b; none when no list matched (never "clean"); error when the URL could not be
checked (the reason says why).

Reads as little as possible: published hub digests first, then a safetensors header and the
few tensors a fingerprint needs by HTTP Range. Polite (per-host limits, robots.txt) and
SSRF-safe (private, loopback and link-local addresses are refused). Resumable: the job's state
lives in the store; after a crash or kill, run the same command with --resume.

Input: one URL per line, or JSON Lines objects {"url": ..., "context": {...}}; blank lines and
# comments are skipped, junk lines are reported on stderr and the rest goes on.
"""

EPILOG = """\
examples:
  modelsieve crawl links.txt --out recs.jsonl
  modelsieve crawl links.jsonl --out recs.jsonl --mode host
  modelsieve crawl links.txt --out recs.jsonl --resume           # after an interruption
  modelsieve crawl links.txt --out recs.jsonl --per-host 4 --delay 0.5 --no-robots
  modelsieve crawl links.txt --out crawl-dir/ --workers 8        # local Dask cluster, one part file per partition
  modelsieve crawl links.txt --out crawl-dir/ --scheduler tcp://10.0.0.5:8786 --db postgresql://ms@db/ms --resume

exit status: 0 every URL checked; 1 done, but some lines were junk or some URLs ended in
"error"; 2 the crawl could not run.
"""


def register(subparsers: Any) -> None:
    parser = command_parser(subparsers, "crawl", "check hosted links and recommend delisting or takedown", DESCRIPTION, EPILOG)
    parser.add_argument("urls", metavar="URLS", type=Path, help="file of URLs (one per line) or JSON Lines with a url field")
    parser.add_argument("--out", metavar="FILE", required=True, type=Path, help="JSON Lines file of recommendations (the job's identity)")
    parser.add_argument("--resume", action="store_true", help="finish the crawl into --out that an interruption left")
    parser.add_argument(
        "--mode",
        choices=("search", "host"),
        default="search",
        help="search: recommend delisting; host: recommend takedown (default: search)",
    )
    parser.add_argument(
        "--fingerprint-key",
        metavar="FILE",
        help="the fingerprint key the lists were made with (default: $MODELSIEVE_FINGERPRINT_KEY or the public key)",
    )
    add_db_option(parser)
    limits = parser.add_argument_group("politeness and limits")
    limits.add_argument("--concurrency", metavar="N", type=positive_int, default=256, help="URLs checked at once (default: 256)")
    limits.add_argument("--global-limit", metavar="N", type=positive_int, default=64, help="requests in flight over all hosts (default: 64)")
    limits.add_argument("--per-host", metavar="N", type=positive_int, default=2, help="requests in flight per host (default: 2)")
    limits.add_argument("--delay", metavar="SECONDS", type=_non_negative, default=0.0, help="seconds between request starts per host (default: 0)")
    limits.add_argument("--timeout", metavar="SECONDS", type=positive_number, default=900.0, help="seconds for one URL, all requests included (default: 900)")
    limits.add_argument("--connect-timeout", metavar="SECONDS", type=positive_number, default=10.0, help="seconds to connect (default: 10)")
    limits.add_argument("--read-timeout", metavar="SECONDS", type=positive_number, default=30.0, help="seconds of silence while reading (default: 30)")
    limits.add_argument("--retries", metavar="N", type=non_negative_int, default=3, help="retries on 429/5xx and dropped connections (default: 3)")
    limits.add_argument(
        "--max-download",
        type=positive_int,
        default=RemoteReadConfig.max_download_bytes,
        metavar="BYTES",
        help="cap on a whole-file download when a host ignores Range (default: 16 GiB)",
    )
    limits.add_argument("--no-robots", action="store_true", help="do not honour robots.txt (only with the site owner's consent)")
    limits.add_argument(
        "--allow-loopback",
        action="store_true",
        help="allow 127.0.0.0/8 and ::1 (tests and operators checking their own host only)",
    )
    add_cluster_options(parser, partitions=True)
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def crawl_config(args: argparse.Namespace) -> CrawlConfig:
    """The crawl configuration the command line asks for."""
    return CrawlConfig(
        fetch=FetchConfig(
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            max_retries=args.retries,
            honour_robots=not args.no_robots,
        ),
        politeness=PolitenessConfig(
            per_host_concurrency=args.per_host, per_host_delay=args.delay, global_concurrency=args.global_limit
        ),
        remote=RemoteReadConfig(max_download_bytes=args.max_download),
        policy=PolicyConfig(mode=args.mode),
        addresses=AddressPolicy(allow_loopback=args.allow_loopback),
        check_timeout=args.timeout,
        concurrency=args.concurrency,
    )


def _input_lines(path: Path) -> Any:
    try:
        yield from bounded_lines(path)
    except OSError as exc:
        raise ModelsieveError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_url_file(path: Path) -> None:
    """Refuse at once what cannot be a URL list: a folder, a missing file, a binary file (a model
    given by mistake would otherwise be reported line by junk line)."""
    if path.is_dir():
        raise ModelsieveError(f"{path}: a folder, not a file of URLs")
    if not path.is_file():
        raise ModelsieveError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise ModelsieveError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\0" in head and not head.startswith(UTF16_MARKS):  # UTF-16 text holds NULs: open_text reads it
        raise ModelsieveError(f"{path}: not a text file of URLs (it holds NUL bytes: a model file?)")


def run(args: argparse.Namespace) -> int:
    _check_url_file(args.urls)
    if on_cluster(args):
        return run_crawl_on_cluster(args, crawl_config(args), _input_lines(args.urls))
    problems = Counter[str]()

    def bad_line(bad: BadLine) -> None:
        problems["junk"] += 1
        print(f"modelsieve: {args.urls}:{bad.line}: {bad.problem}", file=sys.stderr)

    def duplicate(target: CrawlTarget) -> None:
        problems["duplicate"] += 1

    with open_store(args.db, existing=True) as store:
        job = CrawlJob.open(
            store,
            args.out,
            args.urls,
            lambda: read_targets(_input_lines(args.urls)),
            resume=args.resume,
            mode=args.mode,
            on_bad_line=bad_line,
            on_duplicate=duplicate,
        )
        try:
            if problems["duplicate"]:
                print(f"modelsieve: {problems['duplicate']} repeated URLs are checked once", file=sys.stderr)
            key = load_key(args.fingerprint_key)
            lookup = StoreLookup(Matcher.for_store(store, key))
            actions = asyncio.run(_crawl(job, lookup, crawl_config(args), show_progress=not args.json))
        finally:
            job.close()  # the output's lock (the run releases it too)
        progress = job.progress()
    summary = {"out": str(job.out_path), "total": progress.total, "done": progress.done, "actions": dict(actions), "junk_lines": problems["junk"]}
    if args.json:
        print_json_line(summary)
    else:
        counts = ", ".join(f"{action} {count}" for action, count in sorted(actions.items())) or "nothing left to check"
        print(f"crawled {progress.done} of {progress.total} URLs ({counts}) → {job.out_path}")
    return 1 if problems["junk"] or actions.get("error") else 0


async def _crawl(job: CrawlJob, lookup: StoreLookup, config: CrawlConfig, *, show_progress: bool) -> Counter[str]:
    actions = Counter[str]()
    progress = job.progress()
    with progress_bar(total=progress.total, initial=progress.done, unit="URL", enabled=show_progress) as bar:

        def tally(recommendation: Recommendation) -> None:
            actions[recommendation.action] += 1
            bar.update(1)

        async with Crawler(lookup, config) as crawler:
            await job.run(crawler, tally)
    return actions

