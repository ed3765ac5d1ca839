"""`modelsieve match`: look model files (or URLs) up in every list of the store."""

from __future__ import annotations

import argparse
from typing import Any

from modelsieve.api.cli.cluster_options import add_cluster_options, on_cluster, run_match_on_cluster
from modelsieve.api.cli.common import (
    add_db_option,
    add_json_flag,
    command_parser,
    expand_paths,
    print_json_line,
    progress,
    report_failure,
)
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import load_key
from modelsieve.hashlists.matcher import Matcher
from modelsieve.hashlists.model import MatchResult
from modelsieve.hashlists.store import open_store

EXAMPLES = """\
examples:
  modelsieve match model.safetensors
  modelsieve match downloads/ --json | jq 'select(.verdict != "none")'
  modelsieve match --url https://undress.example.com/app
  modelsieve match lora.safetensors --fingerprint-key team.fpkey
  modelsieve match catalogue.txt --workers 8 --json     # a backlog: catalogue.txt lists file paths
  modelsieve match catalogue.txt --scheduler tcp://10.0.0.5:8786 --db postgresql://ms@db/ms

verdicts: exact (a listed URL/domain, or digests agreeing on 64 bits or more), near (a fuzzy
fingerprint match, or a short digest alone: CRC32, AutoV1, AutoV2, a 12-hex AutoV3; for a person
to review), none (no list matched: lists are partial, so "none" never means "clean"). Every match names its list entry,
source, kind (digest name, fuzzy, url or domain), score and, for disputed entries, status.
Fuzzy matches against a base with a background cohort (`modelsieve bases add-background`) also give
the cohort-normalised score, the estimated false-match rate and a decision (review | action);
without a cohort they say "uncalibrated" and are for review only.
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "match",
        "look model files or URLs up in the lists",
        "Hash and fingerprint each model file and look both up in every list of the store;\n"
        "look URLs up in the URL and domain entries. One result per input.\n"
        "With --workers or --scheduler, each PATH is a manifest listing model files on shared storage\n"
        "(one path a line), matched on a Dask cluster.",
        EXAMPLES,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="model files, folders or glob patterns")
    parser.add_argument("--url", action="append", default=[], help="a URL to look up (repeatable)")
    parser.add_argument(
        "--fingerprint-key",
        metavar="FILE",
        help="the fingerprint key the lists were made with (default: $MODELSIEVE_FINGERPRINT_KEY or the public key)",
    )
    add_db_option(parser)
    add_cluster_options(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def describe(result: MatchResult) -> str:
    """A match result for people: the verdict, then one line of evidence per match."""
    lines = [f"{result.subject}: {result.verdict}"]
    for m in result.matches:
        evidence = f"{m.kind} equal" if m.identifies else f"{m.kind} equal: {m.bits} bits, too few to identify a file alone"
        if m.differing:
            evidence += f" (the list's {', '.join(m.differing)} differs)"
        if m.kind == "fuzzy":
            evidence = f"score {m.score:.3f}, coefficient {m.coefficient:.2f}"
            if m.calibration is not None:
                normalised = "" if m.calibration.normalised is None else f"normalised {m.calibration.normalised:.1f}, "
                evidence += f", {normalised}false match {m.calibration.false_match_text} -> {m.decision}"
        flags = "".join(f" [{flag}]" for flag in (m.status, m.trust) if flag not in ("active", "local", "full"))
        lines.append(f"  {m.entry_id} list {m.list}, category {m.category}, source {m.source}: {evidence}{flags}")
    lines += [f"  problem: {problem}" for problem in result.problems]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not args.paths and not args.url:
        raise ModelsieveError("nothing to match: give model files or --url URL")
    if on_cluster(args):
        if args.url:
            raise ModelsieveError("--url is matched in one process: leave out --workers/--scheduler")
        return run_match_on_cluster(args, describe)
    paths = list(expand_paths(args.paths))
    status = 0
    key = load_key(args.fingerprint_key)
    with open_store(args.db, existing=True) as store:
        matcher = Matcher.for_store(store, key)
        for subject, lookup in [(u, matcher.match_url_result) for u in args.url] + [
            (str(p), matcher.match_path) for p in progress(paths, total=len(paths), unit=" files", enabled=not args.json)
        ]:
            try:
                result = lookup(subject)
            except ModelsieveError as exc:
                report_failure(subject, exc)
                status = 1
                continue
            print_json_line(result.to_json()) if args.json else print(describe(result))
    return status
