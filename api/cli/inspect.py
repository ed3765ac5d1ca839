"""`modelsieve inspect`: what a model holds, and what is wrong with it."""

from __future__ import annotations

import argparse
import collections
import os
from typing import Any

from modelsieve.api.cli.common import (
    add_json_flag,
    command_parser,
    expand_models,
    print_json_line,
    printable,
    progress,
    report_failure,
)
from modelsieve.fingerprint.errors import ModelsieveError
from modelsieve.fingerprint.readers import open_model

DESCRIPTION = """\
Read models safely (nothing in them is executed) and summarise each: format, tensor and parameter
counts, dtypes, metadata keys (values are not printed: titles and descriptions can be sensitive)
and any problems found.

Formats: safetensors; PyTorch checkpoints (.ckpt/.pt/.pth/.bin, zip or legacy pickle format, read
without torch through an allow-list: a pickle asking for anything else, e.g. os.system, is refused);
sharded checkpoints (*.index.json); diffusers folders (model_index.json), read as one model whose
tensor names keep their component (unet/..., text_encoder/..., vae/...).

A folder argument is walked: each model below it is inspected; a bad one is reported on stderr and
the rest carry on (exit status 1)."""

EXAMPLES = """\
examples:
  modelsieve inspect model.safetensors
  modelsieve inspect sd15.ckpt lora.safetensors
  modelsieve inspect ./stable-diffusion-v1-5/          # a diffusers folder: one model
  modelsieve inspect --json ./loras/ | jq .dtypes        # one JSON line per model
"""


def register(subparsers: Any) -> None:
    parser = command_parser(subparsers, "inspect", "show format, tensors, dtypes and metadata keys of models", DESCRIPTION, EXAMPLES)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="model file, model folder, folder of models, or glob")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def summarise(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The inspection record of one model (file or folder)."""
    with open_model(path) as reader:
        tensors = reader.tensors()
        dtypes = collections.Counter(t.dtype for t in tensors)
        return {
            "path": str(path),
            "format": reader.format,
            "tensors": len(tensors),
            "parameters": sum(t.numel for t in tensors),
            "dtypes": dict(sorted(dtypes.items())),
            "metadata_keys": sorted(reader.metadata),
            "problems": reader.problems(),
        }


def _print_text(record: dict[str, Any]) -> None:
    print(f"{record['path']}: {record['format']}")
    print(f"  tensors:    {record['tensors']}")
    print(f"  parameters: {record['parameters']:,}")
    print(f"  dtypes:     {', '.join(f'{k} ×{v}' for k, v in record['dtypes'].items()) or '-'}")
    print(f"  metadata:   {', '.join(map(printable, record['metadata_keys'])) or '-'}")  # keys the file chose
    for problem in record["problems"]:
        print(f"  problem:    {problem}")


def run(args: argparse.Namespace) -> int:
    models = list(expand_models(args.paths))
    failed = False
    for path in progress(models, total=len(models), unit="model", enabled=not args.json and len(models) > 1):
        try:
            record = summarise(path)
        except ModelsieveError as exc:
            report_failure(path, exc)
            failed = True
            continue
        if args.json:
            print_json_line(record)
        else:
            _print_text(record)
    return 1 if failed else 0
