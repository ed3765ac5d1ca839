"""`modelsieve bases`: the registry of base models fine-tune deltas are taken against."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from modelsieve.api.cli import background
from modelsieve.api.cli.common import add_db_option, add_json_flag, command_parser, print_json_line
from modelsieve.api.cli.fuzzy_inputs import add_key_option, fingerprint_key, load_fingerprint
from modelsieve.hashlists.errors import InvalidEntryError
from modelsieve.hashlists.store import open_store

EXAMPLES = """\
examples:
  modelsieve bases add v1-5-pruned-emaonly.safetensors --name sd15
  modelsieve bases add sdxl-base.msfp --name sdxl --db store.db
  modelsieve bases list --json
  modelsieve bases remove sd15

A base is stored as its raw fingerprint (sketches, not weights), under the fingerprint key in
use; fingerprints of checkpoints are then taken as deltas from the nearest registered base.
"""


def register(subparsers: Any) -> None:
    parser = command_parser(subparsers, "bases", "register base models (SD 1.5, SDXL, ...) for delta fingerprints",
                            "Manage the base models whose sketches fine-tune deltas are taken against.", EXAMPLES)
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="register a base model", description="Fingerprint a base model and register it.")
    add.add_argument("path", metavar="PATH", help="the base model file (or its saved raw fingerprint)")
    add.add_argument("--name", required=True, help="the base's name, e.g. sd15")
    add.add_argument("--replace", action="store_true", help="overwrite a base of the same name")
    listing = actions.add_parser("list", help="list registered bases", description="List the registered bases.")
    remove = actions.add_parser("remove", help="forget a base", description="Remove a registered base.")
    remove.add_argument("name", metavar="NAME")
    for sub, handler in ((add, run_add), (listing, run_list), (remove, run_remove)):
        add_key_option(sub)
        add_db_option(sub)
        add_json_flag(sub)
        sub.set_defaults(handler=handler)
    background.register_actions(actions)


def run_add(args: argparse.Namespace) -> int:
    fingerprint = load_fingerprint(args.path, fingerprint_key(args), [])
    with open_store(args.db) as store:
        try:
            info = store.add_base(args.name, fingerprint, source=Path(args.path).name, replace=args.replace)
        except InvalidEntryError as exc:
            raise InvalidEntryError(f"{args.path}: {exc}") from None
    if args.json:
        print_json_line(dataclasses.asdict(info))
    else:
        print(f"registered base {info.name!r}: {info.tensors} tensors, key {info.key_id}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        bases = store.list_bases()
    for info in bases:
        if args.json:
            print_json_line(dataclasses.asdict(info))
        else:
            print(f"{info.name}\t{info.tensors} tensors\tkey {info.key_id}/{info.key_check}\tfrom {info.source or '-'}\t{info.added}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        store.remove_base(args.name)
    if args.json:
        print_json_line({"removed": args.name})
    else:
        print(f"removed base {args.name!r}")
    return 0
