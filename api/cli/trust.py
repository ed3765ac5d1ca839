"""`modelsieve trust add|list`: the publishers whose signed bundles this platform imports."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelsieve.api.cli.common import add_db_option, add_json_flag, command_parser, print_json_line
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.hashlists.signing import KeyFileError, parse_public_key, read_key_file
from modelsieve.hashlists.store import open_store
from modelsieve.hashlists.trust import TRUST_LEVELS, trust_publisher

EXAMPLES = """\
examples:
  modelsieve trust add hotline-x ed25519:3q2+7w... --level full
  modelsieve trust add partner-hub partner-hub.pub --level review
  modelsieve trust add old-partner old-partner.pub --level none     # refuse its bundles from now on
  modelsieve trust add partner-hub partner-hub-2027.pub --level review --replace   # a new key
  modelsieve trust list --json
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "trust",
        "manage the publishers whose bundles are accepted",
        "Bundles are imported only from publishers in the trust store, verified with their key.\n"
        "Levels: full (their entries act like your own), review (their matches say trust\n"
        "\"review\": a person confirms before acting), none (bundles refused, their entries stop matching).",
        EXAMPLES,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    add = command_parser(actions, "add", "trust a publisher's public key", "Add a publisher's key, or change its level.", EXAMPLES)
    add.add_argument("name", help="the publisher's name, as its bundles state it")
    add.add_argument("public_key", metavar="PUBKEY", help="'ed25519:BASE64' or a .pub file holding it")
    add.add_argument("--level", choices=TRUST_LEVELS, required=True)
    add.add_argument("--replace", action="store_true",
                     help="trust this key instead of the publisher's current one (a key rotation: bundles signed "
                     "with the old key are refused from then on)")
    add_db_option(add)
    add_json_flag(add)
    add.set_defaults(handler=run_add)
    listing = command_parser(actions, "list", "show trusted publishers", "Show trusted publishers.", EXAMPLES)
    add_db_option(listing)
    add_json_flag(listing)
    listing.set_defaults(handler=run_list)


def run_add(args: argparse.Namespace) -> int:
    text = args.public_key
    if not text.startswith("ed25519:"):
        if not Path(text).exists():
            raise ModelsieveError(f"{text}: no such file (PUBKEY is a .pub file or 'ed25519:BASE64...')")
        text = read_key_file(text, "public key")[0].decode("utf-8", errors="replace")
    try:
        parse_public_key(text)
    except KeyFileError as exc:
        raise KeyFileError(f"{args.public_key}: {exc}") from None
    with open_store(args.db) as store:
        trusted = trust_publisher(store, args.name, text, args.level, replace=args.replace)
    if args.json:
        print_json_line(trusted.__dict__)
    else:
        print(f"trusted {trusted.name} at level {trusted.level} (key id {trusted.key_id})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        for trusted in store.trusted_keys():
            if args.json:
                print_json_line(trusted.__dict__)
            else:
                print(f"{trusted.name}: level {trusted.level}, key id {trusted.key_id}, added {trusted.added}")
    return 0
