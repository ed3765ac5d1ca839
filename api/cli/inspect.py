"""`modelsieve inspect`: what a model file holds, and what is wrong with it."""

from __future__ import annotations

import argparse
import collections
from typing import Any

from modelsieve.api.cli.common import add_json_flag, command_parser, print_json_line
from modelsieve.fingerprint.readers import open_model

EXAMPLES = """\
examples:
  modelsieve inspect model.safetensors
  modelsieve inspect --json lora.safetensors | jq .dtypes
"""


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "inspect",
        "show format, tensors, dtypes and metadata keys of a model",
        "Read a model file safely (nothing in it is executed) and summarise it: format, tensor and\n"
        "parameter counts, dtypes, metadata keys (values are not printed) and any problems found.",
        EXAMPLES,
    )
    parser.add_argument("path", help="model file (.safetensors, .ckpt, .pt, .bin) or model folder")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def summarise(path: str) -> dict[str, Any]:
    """The inspection record of one model."""
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


def run(args: argparse.Namespace) -> int:
    record = summarise(args.path)
    if args.json:
        print_json_line(record)
        return 0
    print(f"{record['path']}: {record['format']}")
    print(f"  tensors:    {record['tensors']}")
    print(f"  parameters: {record['parameters']:,}")
    print(f"  dtypes:     {', '.join(f'{k} ×{v}' for k, v in record['dtypes'].items()) or '-'}")
    print(f"  metadata:   {', '.join(record['metadata_keys']) or '-'}")
    for problem in record["problems"]:
        print(f"  problem:    {problem}")
    return 0
