"""`modelsieve keys api create|list|revoke`: API keys of the HTTP API, with scopes."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modelsieve.api.cli.common import add_db_option, add_json_flag, command_group, command_parser, positive_number, print_json_line
from modelsieve.api.http.auth import SCOPE_HELP, SCOPES, ApiKey, KeyStore
from modelsieve.hashlists.model import utc_time
from modelsieve.hashlists.store import open_store

EXAMPLES = """\
examples:
  modelsieve keys api create --scope lookup --name hub-ingest
  modelsieve keys api create --scope crawl --scope lists:read --rate 200
  modelsieve keys api list
  modelsieve keys api revoke 3f9c0a1e
"""

SCOPES_TEXT = "\n".join(f"  {scope:<12} {text}" for scope, text in SCOPE_HELP.items())


def register(subparsers: Any) -> None:
    keys = command_group(subparsers, "keys", "manage API keys", "API keys let callers use the HTTP API (`modelsieve serve`).")
    parser = command_parser(
        keys,
        "api",
        "API keys of the HTTP API (create, list, revoke)",
        "Create, list and revoke keys for `modelsieve serve`. A key is shown once, when created;\n"
        "the store keeps only its SHA-256. Scopes:\n" + SCOPES_TEXT,
        EXAMPLES,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    create = command_parser(actions, "create", "make a key and print it once", "Make an API key with the given scopes.", EXAMPLES)
    create.add_argument("--scope", action="append", required=True, choices=SCOPES, help="a scope the key grants (repeatable)")
    create.add_argument("--name", default="", help="who or what the key is for (shown in `list` and audit logs)")
    create.add_argument("--rate", type=positive_number, default=None, metavar="PER_SECOND", help="this key's request rate limit (default: the server's)")
    _common(create, run_create)

    show = command_parser(actions, "list", "list keys (never their secrets)", "List API keys: id, name, scopes, state.", EXAMPLES)
    _common(show, run_list)

    revoke = command_parser(actions, "revoke", "revoke a key by id", "Revoke an API key; it stops working at once.", EXAMPLES)
    revoke.add_argument("key_id", metavar="ID", help="the key's 8-hex id (the part after `msk_`)")
    _common(revoke, run_revoke)


def _common(parser: argparse.ArgumentParser, handler: Any) -> None:
    add_db_option(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=handler)


def _record(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "rate_per_second": key.rate_per_second,
        "created_at": utc_time(key.created_at),
        "revoked_at": utc_time(key.revoked_at) if key.revoked_at else None,
    }


def run_create(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        token, key = KeyStore(store).create(args.scope, name=args.name, rate_per_second=args.rate)
    if args.json:
        print_json_line({"key": token, **_record(key)})
    else:
        print(token)
        print(f"(key id {key.key_id}, scopes {' '.join(key.scopes)}; shown only now: store it safely)", file=sys.stderr)
    return 0


def run_list(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        keys = KeyStore(store).all()
    for key in keys:
        record = _record(key)
        if args.json:
            print_json_line(record)
        else:
            state = f"revoked {record['revoked_at']}" if key.revoked_at else "live"
            print(f"{key.key_id}  {' '.join(key.scopes):<30} {state:<28} {key.name}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        KeyStore(store).revoke(args.key_id)
    if args.json:
        print_json_line({"key_id": args.key_id, "revoked": True})
    else:
        print(f"revoked {args.key_id}")
    return 0
