"""`modelsieve db upgrade`: bring a store's schema up to this version of modelsieve."""

from __future__ import annotations

import argparse
from typing import Any

from modelsieve.api.cli.common import add_db_option, add_json_flag, command_parser, print_json_line
from modelsieve.hashlists.store import open_store

EXAMPLES = """\
examples:
  modelsieve db upgrade                                          # the default SQLite store
  modelsieve db upgrade --db postgresql://modelsieve@db.internal/modelsieve
  MODELSIEVE_DB=postgresql://modelsieve@db.internal/modelsieve modelsieve db upgrade --json
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "db",
        "manage the store's schema",
        "The store's schema carries a version. The embedded SQLite store upgrades itself when opened;\n"
        "a PostgreSQL store shared by API replicas is upgraded only by this command (run it once,\n"
        "from one machine, before starting replicas of a newer modelsieve). A store whose schema is\n"
        "newer than this modelsieve is refused everywhere: upgrade modelsieve instead.",
        EXAMPLES,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    upgrade = command_parser(
        actions,
        "upgrade",
        "apply the schema migrations the store lacks",
        "Apply the missing schema migrations in one transaction (an empty database gets the whole\n"
        "schema); a store already up to date is left as it is.",
        EXAMPLES,
    )
    add_db_option(upgrade)
    add_json_flag(upgrade)
    upgrade.set_defaults(handler=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    with open_store(args.db, upgrade=True) as store:
        record = {"store": store.location, "from_version": store.upgraded_from, "to_version": store.schema_version}
    if args.json:
        print_json_line(record)
    elif record["from_version"] == record["to_version"]:
        print(f"{record['store']}: schema version {record['to_version']}, up to date")
    else:
        print(f"{record['store']}: schema upgraded from version {record['from_version']} to {record['to_version']}")
    return 0
