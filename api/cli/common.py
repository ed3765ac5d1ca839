"""Helpers shared by the command modules: path expansion, JSON Lines output, progress bars."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from modelsieve.fingerprint.errors import ModelsieveError

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

T = TypeVar("T")


def command_parser(subparsers: Any, name: str, summary: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """A subcommand parser whose help keeps the description's and examples' line breaks."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object per line (JSON Lines) for machines")


def add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=None,
        help="the store (SQLite file); default: $MODELSIEVE_DB or ~/.local/share/modelsieve/modelsieve.db",
    )


def expand_paths(patterns: Iterable[str], suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> Iterator[Path]:
    """Files named by paths, directories (walked for model files, sorted) and glob patterns.

    A pattern that matches nothing raises ModelsieveError: a typo must not pass as "no match".
    """
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches or not any(os.path.exists(m) for m in matches):
            raise ModelsieveError(f"{pattern}: no such file or directory")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                for root, dirs, files in os.walk(path):
                    dirs.sort()
                    yield from (Path(root) / f for f in sorted(files) if f.lower().endswith(suffixes))
            else:
                yield path


def print_json_line(record: dict[str, Any]) -> None:
    """One compact JSON object on stdout, flushed so pipelines see it at once."""
    sys.stdout.write(json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n")
    sys.stdout.flush()


def report_failure(path: os.PathLike[str] | str, error: Exception) -> None:
    """Say on stderr, on one line, that one input failed; the caller carries on with the rest."""
    print(f"modelsieve: {path}: {error}", file=sys.stderr)


def progress(items: Iterable[T], *, total: int | None, unit: str, enabled: bool = True) -> Iterable[T]:
    """A tqdm bar on stderr, shown only when stderr is a terminal and `enabled` (off for --json)."""
    if not enabled or not sys.stderr.isatty():
        return items
    return tqdm(items, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)


def command_group(subparsers: Any, name: str, summary: str, description: str) -> Any:
    """The sub-commands of a command group (e.g. `keys`), created by whichever module asks first.

    Several command modules can each add their sub-commands to one group this way.
    """
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = command_parser(subparsers, name, summary, description)
        parser.set_defaults(group_commands=parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
    return parser.get_default("group_commands")
