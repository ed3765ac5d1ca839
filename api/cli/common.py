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
        metavar="PATH|URI",
        default=None,
        help="the store: a SQLite file or a postgresql://USER@HOST/DB URI; "
        "default: $MODELSIEVE_DB or ~/.local/share/modelsieve/modelsieve.db",
    )


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a number above 0 (NaN refused)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _matched_paths(patterns: Iterable[str]) -> Iterator[Path]:
    """Paths and glob matches, sorted per pattern; a pattern that matches nothing raises ModelsieveError."""
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches or not any(os.path.exists(m) for m in matches):
            raise ModelsieveError(f"{pattern}: no such file or directory")
        yield from map(Path, matches)


def expand_paths(patterns: Iterable[str], suffixes: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Files named by paths, directories (walked for files with `suffixes`, by default the model
    files' suffixes; sorted) and glob patterns.

    A pattern that matches nothing raises ModelsieveError: a typo must not pass as "no match";
    a folder without model files, and what a walk skips (FIFOs, sockets), are noted on stderr
    (the exit status stays as it is).
    """
    if suffixes is None:
        from modelsieve.fingerprint.readers import MODEL_SUFFIXES  # numpy: only for the commands that read models

        suffixes = MODEL_SUFFIXES
    for path in _matched_paths(patterns):
        if path.is_dir():
            found = False
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if not name.lower().endswith(suffixes):
                        continue
                    found = True
                    file = Path(root) / name
                    if file.exists() and not file.is_file():  # a FIFO (reading it would wait for ever) or socket
                        print(f"modelsieve: {file}: not a regular file, skipped", file=sys.stderr)
                    else:  # a dangling link too: reading it fails, reported by the command
                        yield file
            if not found:
                _note_no_models(path, suffixes)
        else:
            yield path


def _note_no_models(folder: Path, suffixes: tuple[str, ...]) -> None:
    """Say on stderr that a folder held no model files, so an empty answer is not taken for "no match"."""
    print(f"modelsieve: {folder}: no model files in this folder (looked for {' '.join(suffixes)})", file=sys.stderr)


def expand_models(patterns: Iterable[str]) -> Iterator[Path]:
    """Models named by paths and globs; directories yield each model below them (`walk_models`):
    a diffusers folder or a sharded index is one model, any other model file one model each; a
    folder without any is noted on stderr.
    """
    from modelsieve.fingerprint.readers import MODEL_SUFFIXES, walk_models  # numpy: only for the commands that read models

    for path in _matched_paths(patterns):
        if not path.is_dir():
            yield path
            continue
        found = False
        for model in walk_models(path):
            found = True
            yield model
        if not found:
            _note_no_models(path, MODEL_SUFFIXES)


def printable(text: str) -> str:
    """`text` for a terminal: control, format (bidi) and separator characters escaped as in repr, the
    rest kept. For names a model file chooses, which could otherwise clear the screen, move the
    cursor or forge output lines."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_json_line(record: dict[str, Any]) -> None:
    """One compact JSON object on stdout, flushed so pipelines see it at once."""
    sys.stdout.write(json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n")
    sys.stdout.flush()


def report_failure(path: os.PathLike[str] | str, error: Exception) -> None:
    """Say on stderr, on one line, that one input failed; the caller carries on with the rest."""
    message = " ".join(str(error).split())
    print(f"modelsieve: {message if message.startswith(str(path)) else f'{path}: {message}'}", file=sys.stderr)


def progress(items: Iterable[T], *, total: int | None, unit: str, enabled: bool = True) -> Iterable[T]:
    """A tqdm bar on stderr, shown only when stderr is a terminal and `enabled` (off for --json)."""
    if not enabled or not sys.stderr.isatty():
        return items
    return tqdm(items, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)


def progress_bar(*, total: int | None, unit: str, initial: int = 0, enabled: bool = True) -> tqdm:
    """A tqdm bar (rate and ETA) on stderr advanced by hand with `.update(n)`, e.g. from async work;
    a silent no-op unless stderr is a terminal and `enabled` (off for --json). Unit "B" shows KiB/MiB/GiB."""
    return tqdm(
        total=total,
        initial=initial,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not enabled or not sys.stderr.isatty(),
    )


def command_group(subparsers: Any, name: str, summary: str, description: str, epilog: str = "") -> Any:
    """The sub-commands of a command group (e.g. `keys`), created by whichever module asks first.

    Several command modules can each add their sub-commands to one group this way.
    """
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = command_parser(subparsers, name, summary, description, epilog)
        parser.set_defaults(group_commands=parser.add_subparsers(title="actions", metavar="ACTION", required=True))
    return parser.get_default("group_commands")
