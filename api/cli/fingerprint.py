"""`modelsieve fingerprint`: fuzzy fingerprints of checkpoints and LoRAs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelsieve.api.cli.common import add_db_option, add_json_flag, command_parser, expand_paths, print_json_line, progress, report_failure
from modelsieve.api.cli.fuzzy_inputs import (
    FINGERPRINT_SUFFIX,
    add_base_options,
    add_key_option,
    bases_for,
    fingerprint_key,
    load_fingerprint,
)
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.fuzzy import Fingerprint
from modelsieve.hashlists.atomic import atomic_write

EXAMPLES = """\
examples:
  modelsieve fingerprint model.safetensors
  modelsieve fingerprint tune.safetensors -o tune.msfp           # save it (binary, compact)
  modelsieve fingerprint downloads/ -o prints/ --json            # one .msfp per model, JSON Lines summary
  modelsieve fingerprint tune.safetensors --base v1-5-pruned.safetensors

A checkpoint's fingerprint is its delta from the nearest registered base (`modelsieve bases add`);
with no base that fits it is a raw fingerprint, useful only as a base. LoRA/LyCORIS files give
the sketch of their weight change. Fingerprints depend on the key: a consortium shares its own.
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "fingerprint",
        "fuzzy-fingerprint checkpoints and LoRAs",
        "Compute the keyed tensor fingerprint of each model: per-tensor linear sketches of its\n"
        "delta from the nearest registered base (checkpoints) or of its weight change (LoRAs).\n"
        "Near-copies (re-saves, renames, merges, further tuning) keep similar fingerprints.",
        EXAMPLES,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="model files, folders or glob patterns")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="save the fingerprint (binary .msfp); with several models, or when FILE is a folder, "
                        "a folder for one .msfp each")
    add_base_options(parser)
    add_key_option(parser)
    add_db_option(parser)
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def summary(path: Path, fp: Fingerprint) -> dict[str, Any]:
    return {"path": str(path), **fp.to_json(), "bytes": len(fp.to_bytes())}


def _destination(output: str | None, path: Path, several: bool) -> Path | None:
    """Where `path`'s fingerprint goes: `output` itself, or inside it when it is (or, for several
    models, becomes) a folder."""
    if output is None:
        return None
    folder = Path(output)
    if not several and not folder.is_dir():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelsieveError(f"cannot create the folder {folder}: {exc.strerror}") from None
    return folder / (path.stem + FINGERPRINT_SUFFIX)


def _save(fp: Fingerprint, destination: Path) -> None:
    """`destination` whole or untouched, and no temp file left behind (hashlists.atomic)."""
    try:
        with atomic_write(destination) as handle:
            handle.write(fp.to_bytes())
    except OSError as exc:
        raise ModelsieveError(f"cannot save the fingerprint to {destination}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    key = fingerprint_key(args)
    bases = bases_for(args, key)
    paths = list(expand_paths(args.paths))
    if args.output and len(paths) > 1 and Path(args.output).is_file():
        raise ModelsieveError(f"{args.output}: with several models, -o must name a folder")
    status = 0
    for path in progress(paths, total=len(paths), unit=" models", enabled=not args.json):
        try:
            fp = load_fingerprint(path, key, bases)
        except ModelsieveError as exc:
            report_failure(path, exc)
            status = 1
            continue
        destination = _destination(args.output, path, len(paths) > 1)
        if destination is not None:
            _save(fp, destination)
        record = summary(path, fp)
        if args.json:
            print_json_line(record)
        else:
            what = "LoRA delta" if fp.kind == "lora" else f"delta from base {fp.base!r}" if fp.base else "raw (no base fits)"
            saved = f", saved to {destination}" if destination else ""
            print(f"{path}: {fp.kind}, {what}, {record['tensors']} tensors, {record['bytes']:,} bytes{saved}")
    return status
