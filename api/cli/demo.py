"""`modelsieve demo`: the main job, end to end, on a benign sample model it makes itself.

Needs no network and no input: it writes a small safetensors model of random weights, hashes
it, reads it, and shows why the tensor-data hash (AutoV3) matters by re-saving the same tensors
with edited metadata.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from modelsieve.api.cli.common import add_json_flag, command_parser, print_json_line
from modelsieve.api.cli.hash import print_table
from modelsieve.api.cli.inspect import summarise
from modelsieve.fingerprint.digests import hash_file

EXAMPLES = """\
examples:
  modelsieve demo
  modelsieve demo --output demo-output     # keep the generated files
  modelsieve demo --json | jq .
"""

SAMPLE_SEED = 0  # fixed, so every run shows the same digests
SAMPLE_LAYERS = 3
SAMPLE_WIDTH = 768  # 3 fp16 768×768 layers ≈ 3.5 MB: over 2 MiB, so AutoV1 is defined too


def register(subparsers: Any) -> None:
    parser = command_parser(
        subparsers,
        "demo",
        "run the main job on a sample model it generates (no network)",
        "Generate a small benign sample model (random weights, safetensors), then hash it and read\n"
        "it as `modelsieve hash` and `modelsieve inspect` would. A second copy with edited metadata\n"
        "shows that the whole-file sha256 changes while the tensor-data hash (autov3) does not.",
        EXAMPLES,
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        default=None,
        help="write the sample files here and keep them (default: a temporary folder, removed afterwards)",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def write_sample_model(path: Path, metadata: dict[str, str]) -> Path:
    """A tiny multi-layer network of random fp16 weights (the same every time), as safetensors."""
    rng = np.random.default_rng(SAMPLE_SEED)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(SAMPLE_LAYERS):
        scale = 1 / np.sqrt(SAMPLE_WIDTH)
        tensors[f"layers.{layer}.weight"] = (rng.standard_normal((SAMPLE_WIDTH, SAMPLE_WIDTH)) * scale).astype(np.float16)
        tensors[f"layers.{layer}.bias"] = np.zeros(SAMPLE_WIDTH, dtype=np.float16)
    save_file(tensors, str(path), metadata=metadata)
    return path


@contextlib.contextmanager
def demo_folder(output: str | None) -> Iterator[Path]:
    """The folder to work in: `output` (created, kept) or a temporary one (removed)."""
    if output is not None:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="modelsieve-demo-") as folder:
        yield Path(folder)


def run(args: argparse.Namespace) -> int:
    with demo_folder(args.output) as folder:
        sample = write_sample_model(folder / "sample.safetensors", {"name": "modelsieve demo sample"})
        edited = write_sample_model(folder / "sample-edited.safetensors", {"name": "renamed on re-upload"})
        original_digests, edited_digests = hash_file(sample), hash_file(edited)
        summary = summarise(str(sample))
        sha256_changed = original_digests.digests["sha256"] != edited_digests.digests["sha256"]
        autov3_unchanged = original_digests.digests["autov3"] == edited_digests.digests["autov3"]
        if args.json:
            print_json_line({"step": "hash", **original_digests.to_json()})
            print_json_line({"step": "inspect", **summary})
            print_json_line({"step": "hash", **edited_digests.to_json()})
            print_json_line({"step": "metadata-edit", "sha256_changed": sha256_changed, "autov3_unchanged": autov3_unchanged})
            return 0
        print(f"modelsieve demo: a sample model of random weights, made here (nothing downloaded) in {folder}\n")
        print("1. whole-file digests (modelsieve hash):")
        print_table(original_digests)
        print("\n2. what the model holds (modelsieve inspect):")
        print(f"  format {summary['format']}, {summary['tensors']} tensors, {summary['parameters']:,} parameters, "
              f"dtypes {', '.join(summary['dtypes'])}, metadata keys {', '.join(summary['metadata_keys']) or '-'}")
        for problem in summary["problems"]:
            print(f"  problem: {problem}")
        print("\n3. the same tensors re-saved with edited metadata (a typical re-upload):")
        print_table(edited_digests)
        print(f"\n  sha256 {'differs' if sha256_changed else 'matches'}, autov3 {'matches' if autov3_unchanged else 'differs'}"
              ": the tensor-data hash still recognises the same weights after a metadata edit.")
    return 0
