"""The `modelsieve` command line.

Each command lives in its own module here and exposes `register(subparsers)`, which adds its
parser and sets `handler` to a function `(args) -> int` returning the exit status.
Exit statuses: 0 done; 1 done, but some inputs failed (each reported on stderr); 2 error;
130 interrupted (Ctrl-C); 143 stopped by SIGTERM, which unwinds as Ctrl-C does.

Only the chosen command's modules are imported (numpy, aiohttp and the rest cost most of a
second): the top-level parser knows every command from `COMMANDS` alone.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Collection, Iterator, Sequence
from typing import Any

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

# The command each module registers and that command's one-line help, so that `modelsieve --help`
# and choosing a command import nothing else. tests/test_cli_lazy.py checks it against the modules.
# A module missing here still works: it is imported every time (slower start-up).
COMMANDS = {
    "demo": ("demo", "run the main job end to end on a synthetic zoo (no network)"),
    "inspect": ("inspect", "show format, tensors, dtypes and metadata keys of models"),
    "hash": ("hash", "whole-file digests (sha256, blake3, AutoV1/V2/V3, ...)"),
    "lists": ("list", "manage lists of known-harmful models, URLs and domains"),
    "match": ("match", "look model files or URLs up in the lists"),
    "trust": ("trust", "manage the publishers whose bundles are accepted"),
    "keys": ("keys", "make publisher keys for signing bundles; manage API keys"),
    "crawl": ("crawl", "check hosted links and recommend delisting or takedown"),
    "api_keys": ("keys", "make publisher keys for signing bundles; manage API keys"),
    "serve": ("serve", "run the HTTP API"),
    "fingerprint": ("fingerprint", "fuzzy-fingerprint checkpoints and LoRAs"),
    "compare": ("compare", "compare two models' fuzzy fingerprints"),
    "bases": ("bases", "register base models (SD 1.5, SDXL, ...) for delta fingerprints"),
    "db": ("db", "manage the store's schema"),
}

DESCRIPTION = """\
Recognise known-harmful generative AI models and recommend what to delist or take down.

Whole files get cryptographic digests (sha256, blake3, AutoV1/V2/V3, ...); tensors inside
checkpoints and LoRAs get fuzzy fingerprints so re-saves, merges and small fine-tunes still
match. Model files are hostile input: nothing in them is ever executed.
"""

EPILOG = """\
exit status: 0 done; 1 done, but some inputs failed (reported on stderr); 2 error;
130 interrupted (Ctrl-C); 143 stopped by SIGTERM (cleaned up as after Ctrl-C).
Run `modelsieve COMMAND --help` for each command's options and examples.
"""


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser listing every command; the modules of the commands in `load` (every
    command when None) are imported and register their full parsers, the others stay stubs."""
    parser = argparse.ArgumentParser(
        prog="modelsieve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        name, summary = COMMANDS.get(module_name, (None, ""))
        if load is None or name is None or name in load:
            importlib.import_module(f"{__name__}.{module_name}").register(subparsers)
        elif name not in subparsers.choices:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


class _VersionAction(argparse.Action):
    """`--version`, looking the installed version up only when asked (importlib.metadata takes ~40 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import version

        print(f"{parser.prog} {version('modelsieve')}")
        parser.exit()


def requested_command(argv: Sequence[str]) -> str | None:
    """The command word of a command line: its first argument that is not an option (the
    top-level options take no values), or None (e.g. `--help`)."""
    for index, arg in enumerate(argv):
        if arg == "--":
            return argv[index + 1] if index + 1 < len(argv) else None
        if not arg.startswith("-"):
            return arg
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it unwinds exactly as Ctrl-C does."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM (a scheduler or `kill` stopping the job) unwinds it like
    Ctrl-C: temp files removed, transactions rolled back, a crawl's finished lines kept. Without
    it, SIGTERM ended the process on the spot. The previous handler is restored afterwards (the
    command may run inside a longer-lived process); `serve` installs its own while it runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; expected failures become a one-line `modelsieve: error: ...` and status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = requested_command(argv)
    args = build_parser(() if command is None else (command,)).parse_args(argv)
    try:
        with _sigterm_unwinds():
            return int(args.handler(args))
    except ModelsieveError as exc:
        print(f"modelsieve: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("modelsieve: stopped (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("modelsieve: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # a closed pipe (e.g. `| head`) is not an error worth a traceback
        return 0

if __name__ == "__main__":
    sys.exit(main())
