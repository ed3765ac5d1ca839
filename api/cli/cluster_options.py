"""Options and runners shared by commands that can run on a Dask cluster (`crawl`, `match`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.model import MatchResult

from modelsieve.api.cli.common import positive_int, print_json_line, progress_bar, report_failure
from modelsieve.crawler.crawl import CrawlConfig
from modelsieve.crawler.inputs import BadLine, read_targets


def add_cluster_options(parser: argparse.ArgumentParser, *, partitions: bool = False) -> None:
    group = parser.add_argument_group("on a Dask cluster (the `distributed` extra)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--workers", metavar="N", type=positive_int, help="start a local cluster of N worker processes")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use the running Dask cluster behind this scheduler")
    if partitions:
        group.add_argument(
            "--partitions",
            metavar="N",
            type=positive_int,
            default=64,
            help="URLs are split by registrable domain into N partitions, one task each (default: 64)",
        )


def on_cluster(args: argparse.Namespace) -> bool:
    return bool(args.workers or args.scheduler)


def run_crawl_on_cluster(args: argparse.Namespace, config: CrawlConfig, lines: Any) -> int:
    """`crawl --workers/--scheduler`: the partitioned crawl into the folder --out."""
    from modelsieve.crawler.cluster import dask_client, store_location  # Dask is imported only when asked for
    from modelsieve.crawler.partitioned import run_partitioned_crawl

    junk = 0

    def bad_line(bad: BadLine) -> None:
        nonlocal junk
        junk += 1
        print(f"modelsieve: {args.urls}:{bad.line}: {bad.problem}", file=sys.stderr)

    out_dir = Path(args.out)
    with dask_client(workers=args.workers, scheduler=args.scheduler) as client, progress_bar(
        total=None, unit="URL", enabled=not args.json
    ) as bar:
        summary = run_partitioned_crawl(
            client,
            args.urls,
            read_targets(lines),
            out_dir,
            config,
            store_location=store_location(args.db),
            fingerprint_key=args.fingerprint_key,
            partitions=args.partitions,
            resume=args.resume,
            on_bad_line=bad_line,
            on_partition=lambda result: bar.update(result.urls),
        )
    record = {
        "out": str(summary.out),
        "total": summary.urls,
        "partitions": summary.partitions,
        "partitions_resumed": summary.skipped_partitions,
        "actions": summary.actions,
        "junk_lines": junk,
    }
    if args.json:
        print_json_line(record)
    else:
        counts = ", ".join(f"{action} {count}" for action, count in sorted(summary.actions.items())) or "no URLs"
        print(f"crawled {summary.urls} URLs in {summary.partitions} partitions ({counts}) → {summary.out}")
    return 1 if junk or summary.actions.get("error") else 0


def manifest_paths(manifests: list[str]) -> list[str]:
    """The file paths listed in manifest files (one a line; blank lines and # comments skipped)."""
    paths = []
    for manifest in manifests:
        try:
            with open(manifest, encoding="utf-8", errors="replace") as handle:
                paths += [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
        except OSError as exc:
            raise ModelsieveError(f"cannot read {manifest}: {exc.strerror or exc}") from None
    return paths


def run_match_on_cluster(args: argparse.Namespace, describe: Callable[[MatchResult], str]) -> int:
    """`match MANIFEST... --workers/--scheduler`: every listed file matched on the cluster."""
    from modelsieve.crawler.backlog import match_on_cluster  # Dask is imported only when asked for
    from modelsieve.crawler.cluster import dask_client, store_location

    paths = manifest_paths(args.paths)
    failed = 0
    with dask_client(workers=args.workers, scheduler=args.scheduler) as client, progress_bar(
        total=len(paths), unit="file", enabled=not args.json
    ) as bar:
        for outcomes in match_on_cluster(client, paths, store_location=store_location(args.db), fingerprint_key=args.fingerprint_key):
            for outcome in outcomes:
                if outcome.result is None:
                    failed += 1
                    report_failure(outcome.path, ModelsieveError(outcome.error or "failed"))
                elif args.json:
                    print_json_line(outcome.result.to_json())
                else:
                    bar.write(describe(outcome.result))
            bar.update(len(outcomes))
    return 1 if failed else 0
