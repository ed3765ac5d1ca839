"""`modelsieve hash`: whole-file digests of model files, every digest from one read."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from modelsieve.api.cli.common import add_json_flag, command_parser, expand_paths, print_json_line, progress_bar
from modelsieve.fingerprint.digests import DEFAULT_DIGESTS, DIGEST_NAMES, FileDigests, digest_names, hash_file
from modelsieve.fingerprint.errors import ModelsieveError

DESCRIPTION = f"""\
Compute whole-file digests of model files. Each file is read once; every digest comes from
that single read (the digests run side by side on all cores).

digests (names as in --json and everywhere in modelsieve):
  sha256, blake3, md5, sha1   of the whole file, lower-case hex
  crc32    CRC-32 (zlib polynomial), printed in Civitai's form: the 4 bytes little-endian,
           8 upper-case hex ("hello world" -> 85114A0D; zlib's integer is 0x0D4A1185)
  autov1   A1111's legacy model hash: first 8 hex of SHA-256 of the 0x10000 bytes at offset
           0x100000; null for files shorter than 0x200000 bytes (2 MiB), as on Civitai
  autov2   first 10 hex of the whole-file SHA-256 (A1111's short hash, Civitai's AutoV2)
  autov3   SHA-256 of a safetensors file's tensor data, after its header (kohya/A1111
           addnet hash, Civitai's AutoV3; Civitai shows its first 12 hex): survives metadata
           edits. From byte 8 instead when the header is 16 MiB or more (Civitai's rule).
           Like Civitai's scanner, for any file: a .ckpt's is the SHA-256 from byte 8
default: {",".join(DEFAULT_DIGESTS)} (md5 and sha1 only on request)
"""

EXAMPLES = """\
examples:
  modelsieve hash model.safetensors
  modelsieve hash --json models/ 'downloads/**/*.ckpt' > digests.jsonl
  modelsieve hash --algo +md5,sha1 lora.safetensors     # the defaults plus md5 and sha1
  modelsieve hash --algo sha256,autov3 lora.safetensors # exactly these
  modelsieve hash --algo all --json model.safetensors   # every digest

Directories are walked for model files (.safetensors .ckpt .pt .pth .bin); files named
directly are hashed whatever their name. A file that cannot be read is reported on stderr
and the others still go on (exit status 1).
"""


def register(subparsers: Any) -> None:
    parser = command_parser(subparsers, "hash", "whole-file digests (sha256, blake3, AutoV1/V2/V3, ...)", DESCRIPTION, EXAMPLES)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="model files, directories or glob patterns")
    parser.add_argument(
        "--algo",
        metavar="NAMES",
        default=None,
        help="comma list of digests to compute instead of the defaults; start it with + to add to "
        "the defaults (+md5,sha1); 'all' for every digest",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def parse_algo(spec: str | None) -> tuple[str, ...]:
    """The digest names an --algo value asks for (see --help)."""
    if spec is None:
        return DEFAULT_DIGESTS
    spec = spec.strip()
    if spec.lower() == "all":
        return DIGEST_NAMES
    if spec.startswith("+"):
        return digest_names([*DEFAULT_DIGESTS, *_split(spec[1:])])
    return digest_names(_split(spec))


def _split(spec: str) -> list[str]:
    return [name for name in spec.split(",") if name.strip()]


def run(args: argparse.Namespace) -> int:
    names = parse_algo(args.algo)
    paths = list(expand_paths(args.paths))
    failures = 0
    with progress_bar(total=sum(_size(path) for path in paths), unit="B", enabled=not args.json) as bar:
        for path in paths:
            try:
                result = hash_file(path, names, on_progress=bar.update)
            except ModelsieveError as exc:
                failures += 1
                bar.clear()
                print(f"modelsieve: {exc}", file=sys.stderr)
                continue
            if args.json:
                print_json_line(result.to_json())
            else:
                bar.clear()
                print_table(result)
    return 1 if failures else 0


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # reported when hashing it fails


def print_table(result: FileDigests) -> None:
    """One block per file: path, format and size, then one aligned row per digest."""
    print(f"{result.path}  ({result.format}, {result.size:,} bytes)")
    width = max(len(name) for name in result.digests)
    for name, value in result.digests.items():
        print(f"  {name:<{width}}  {value if value is not None else '-'}")
    sys.stdout.flush()
