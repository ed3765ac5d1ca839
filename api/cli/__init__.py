"""The `modelsieve` command line.

Each command lives in its own module here and exposes `register(subparsers)`, which adds its
parser and sets `handler` to a function `(args) -> int` returning the exit status.
Exit statuses: 0 done; 1 done, but some inputs failed (each reported on stderr); 2 error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import version

from modelsieve.fingerprint.errors import ModelsieveError

COMMAND_MODULES = (
    "demo",
    "inspect",
    "hash",
    "lists",
    "match",
    "trust",
    "keys",
    "crawl",
    "api_keys",
    "serve",
    "fingerprint",
    "compare",
    "bases",
    "db",
)

DESCRIPTION = """\
Recognise known-harmful generative AI models and recommend what to delist or take down.

Whole files get cryptographic digests (sha256, blake3, AutoV1/V2/V3, ...); tensors inside
checkpoints and LoRAs get fuzzy fingerprints so re-saves, merges and small fine-tunes still
match. Model files are hostile input: nothing in them is ever executed.
"""

EPILOG = """\
exit status: 0 done; 1 done, but some inputs failed (reported on stderr); 2 error.
Run `modelsieve COMMAND --help` for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command module's subcommand."""
    parser = argparse.ArgumentParser(
        prog="modelsieve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('modelsieve')}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module_name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; expected failures become a one-line `modelsieve: error: ...` and status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ModelsieveError as exc:
        print(f"modelsieve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("modelsieve: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # a closed pipe (e.g. `| head`) is not an error worth a traceback
        return 0


if __name__ == "__main__":
    sys.exit(main())
