"""`modelsieve keys generate`: a publisher's Ed25519 key pair for signing bundles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelsieve.api.cli.common import add_json_flag, command_group, command_parser, print_json_line
from modelsieve.hashlists.model import check_publisher_name
from modelsieve.hashlists.signing import KeyFileError, generate_key_files, key_id, public_key_text

EXAMPLES = """\
examples:
  modelsieve keys generate example-trust-safety
  modelsieve keys generate example-trust-safety --dir ~/.config/modelsieve/keys
  # then give NAME.pub to the platforms that import your bundles; they run:
  modelsieve trust add example-trust-safety "$(cat example-trust-safety.pub)" --level full
"""


def register(subparsers: Any) -> None:
    actions = command_group(
        subparsers,
        "keys",
        "make publisher keys for signing bundles; manage API keys",
        "Publisher keys sign exported bundles (Ed25519). The private key is written with mode\n"
        "0600 and never printed or overwritten; the public key (NAME.pub) is what you share.\n"
        "API keys (`keys api`) let callers use the HTTP API.",
        EXAMPLES,
    )
    generate = command_parser(
        actions, "generate", "make a key pair NAME.key (private) and NAME.pub (public)", "Make a new key pair.", EXAMPLES
    )
    generate.add_argument("name", help="publisher name; files are NAME.key and NAME.pub")
    generate.add_argument("--dir", type=Path, default=Path("."), help="folder for the key files (default: here)")
    add_json_flag(generate)
    generate.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    check_publisher_name(args.name)
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create the folder {args.dir}: {exc.strerror}") from None
    private_path, public_path = args.dir / f"{args.name}.key", args.dir / f"{args.name}.pub"
    public = generate_key_files(private_path, public_path)
    record = {"name": args.name, "private_key_file": str(private_path), "public_key_file": str(public_path), "public_key": public_key_text(public), "key_id": key_id(public)}
    if args.json:
        print_json_line(record)
    else:
        print(f"private key: {private_path} (mode 0600; keep it secret)")
        print(f"public key:  {public_path}  key id {record['key_id']}")
        print(f"  {record['public_key']}")
    return 0
