"""`modelsieve bases add-background|list-background|remove-background|export-background`: each base's cohort of
known-benign derived models, which calibrates fuzzy scores (see README "Calibration")."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from modelsieve.api.cli.common import add_db_option, add_json_flag, expand_models, print_json_line, progress, report_failure
from modelsieve.api.cli.fuzzy_inputs import add_key_option, fingerprint_key, load_fingerprint
from modelsieve.fingerprint.calibration import Cohort
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import SAME_BASE_DISTANCE, BaseModel, Fingerprint, FingerprintKey, change_from_base
from modelsieve.hashlists.bundles import export_background
from modelsieve.hashlists.db import DB_ENV, default_db_path
from modelsieve.hashlists.signing import load_private_key
from modelsieve.hashlists.store import open_store

EXAMPLES = """\
examples:
  modelsieve bases add-background benign-tunes/*.safetensors --base sd15
  modelsieve bases add-background community-loras/ --base sd15 --json
  modelsieve bases list-background --base sd15
  modelsieve bases remove-background 3f9a1c02e4b7
  modelsieve bases export-background --base sd15 --key acme.key --as acme -o sd15-cohort.bundle
  modelsieve list import sd15-cohort.bundle      # on a platform that trusts acme's key

Background models are known-benign fine-tunes and LoRAs of a registered base (the more, and the
more like the models you screen, the better; 20+ is a good start). Only their fingerprints are
stored. With a cohort, fuzzy matches against that base report a normalised score and an
estimated false-match rate; without one they are flagged "uncalibrated". Add only models you
trust to be benign: a harmful model in the cohort would make its own copies look ordinary.
That is why cohorts travel only in signed bundles, imported from publishers you trust
(`modelsieve trust`); imported members name their publisher in their source. A re-import adds
only the members the store lacks (so it also re-adds members you removed since).
"""


def register_actions(actions: Any) -> None:
    """Add the background-cohort actions to the `bases` command's subparsers."""
    add = actions.add_parser("add-background", help="add known-benign models to a base's cohort", epilog=EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description="Fingerprint known-benign models derived from a registered base and add them "
                             "to its background cohort (fingerprints only, never weights).")
    add.add_argument("paths", nargs="+", metavar="PATH", help="model files, folders, globs or saved fingerprints")
    add.add_argument("--base", required=True, metavar="NAME", help="the registered base they derive from")
    listing = actions.add_parser("list-background", help="list background cohort members", epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 description="List the background cohort members (of one base, or all).")
    listing.add_argument("--base", metavar="NAME", help="only this base's cohort")
    remove = actions.add_parser("remove-background", help="drop a background cohort member", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Remove one background model by its id (or a unique prefix of 8+ hex digits).")
    remove.add_argument("id", metavar="ID")
    export = actions.add_parser("export-background", help="write a signed bundle of a base's cohort", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Write a base's background cohort (fingerprints and sources, never weights) "
                                "as a bundle signed with your key, for partners to import with `modelsieve list import`.")
    export.add_argument("--base", required=True, metavar="NAME", help="the base whose cohort to export")
    export.add_argument("--key", required=True, metavar="FILE", help="your private signing key (modelsieve keys generate)")
    export.add_argument("--as", dest="as_name", required=True, metavar="NAME", help="your publisher name, as partners trust it")
    export.add_argument("--out", "-o", required=True, type=Path, metavar="FILE", help="the bundle to write")
    for sub, handler in ((add, run_add), (listing, run_list), (remove, run_remove), (export, run_export)):
        if sub is not export:  # an export copies the stored fingerprints as they are: no fingerprint key needed
            add_key_option(sub)
        add_db_option(sub)
        add_json_flag(sub)
        sub.set_defaults(handler=handler)


def run_add(args: argparse.Namespace) -> int:
    key = fingerprint_key(args)
    with open_store(args.db) as store:
        bases = store.bases(key)
        if args.base not in {b.name for b in bases}:
            raise ModelsieveError(f"no base named {args.base!r} is registered with key {key.key_id} (see `modelsieve bases add`)")
        paths = list(expand_models(args.paths))
        fingerprints, sources, status = [], [], 0
        for path in progress(paths, total=len(paths), unit=" models", enabled=not args.json):
            try:
                fingerprints.append(_member(path, key, bases, args.base))
                sources.append(path.name)
            except ModelsieveError as exc:
                report_failure(path, exc)
                status = 1
        added = store.add_background(args.base, fingerprints, sources=sources)
        total = len(store.list_background(args.base))
    if args.json:
        for info in added:
            print_json_line(info.to_json())
    else:
        print(f"added {len(added)} background models to base {args.base!r} ({len(fingerprints) - len(added)} already there); "
              f"its cohort now has {total}")
    return status


def _member(path: Path, key: FingerprintKey, bases: list[BaseModel], base: str) -> Fingerprint:
    """A background member's delta fingerprint; refused when it is not a change to `base`: taken
    against another base, or the base itself (a zero change would narrow the cohort's null and
    make every estimate more confident than the cohort supports)."""
    fingerprint = load_fingerprint(path, key, bases, require_base=True)
    if fingerprint.kind == "lora":
        return fingerprint
    if fingerprint.base != base:
        raise ModelsieveError(f"it is a change to base {fingerprint.base!r}, not {base!r}")
    change = change_from_base(fingerprint.sketches, next(b for b in bases if b.name == base))
    if change <= SAME_BASE_DISTANCE:
        raise ModelsieveError(f"it is base {base!r} itself (relative change {change:.1e}), not a fine-tune of it")
    return fingerprint


def run_list(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        members = store.list_background(args.base)
    for info in members:
        if args.json:
            print_json_line(info.to_json())
        else:
            print(f"{info.id[:12]}\t{info.base}\t{info.kind}\t{info.tensors} tensors\tkey {info.key_id}\tfrom {info.source or '-'}\t{info.added}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        store.remove_background(args.id)
    if args.json:
        print_json_line({"removed": args.id})
    else:
        print(f"removed background model {args.id}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    with open_store(args.db) as store:
        manifest = export_background(store, args.base, key, args.out, as_name=args.as_name)
    if args.json:
        print_json_line({"file": str(args.out), **manifest.to_json()})
    else:
        print(f"{args.out}: base {args.base!r}'s cohort, {manifest.counts['background']} background models, signed as {manifest.publisher}")
    return 0


def cohorts_for(args: argparse.Namespace, key: FingerprintKey) -> dict[str, Cohort]:
    """The store's background cohorts for `key` (none when there is no store and no --db)."""
    if args.db is None and not os.environ.get(DB_ENV) and not default_db_path().exists():
        return {}
    with open_store(args.db) as store:
        return store.cohorts(key)
