"""Models spread over several files, read as one: sharded checkpoints and diffusers folders.

- Sharded: `*.safetensors.index.json` / `*.bin.index.json` map each tensor name to a shard file in
  the same folder. Every shard must exist inside the folder, and every tensor must be where the
  index says, in exactly one shard.
- Diffusers: a folder with `model_index.json` whose components (`unet/`, `text_encoder/`, `vae/`,
  ...) each hold weights (single file or sharded, safetensors or .bin). Tensor names keep their
  component: `unet/conv_in.weight`.

`walk_models` finds the models below a folder the same way: a diffusers folder or a sharded index
is one model; any other model file is a model of its own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelsieve.fingerprint.errors import ModelFileError, quoted
from modelsieve.fingerprint.readers.base import ModelReader, TensorInfo
from modelsieve.fingerprint.readers.fileformat import MODEL_SUFFIXES, open_model_file
from modelsieve.fingerprint.readers.strict_json import read_json_object

MAX_JSON_BYTES = 64 * 2**20
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
DIFFUSERS_INDEX = "model_index.json"
_COMPONENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class CompositeReader(ModelReader):
    """Several readers presented as one model; each part's tensor names get the part's prefix."""

    def __init__(
        self,
        path: Path,
        format: str,
        parts: Sequence[tuple[str, ModelReader]],
        metadata: Mapping[str, str],
        problems: Sequence[str] = (),
    ) -> None:
        self.path, self.format, self.metadata = path, format, dict(metadata)
        self._parts = list(parts)
        self._problems = list(problems) + [f"{prefix}{p}" for prefix, reader in parts for p in reader.problems()]
        self._where: dict[str, tuple[ModelReader, str]] = {}
        self._infos: list[TensorInfo] = []
        for prefix, reader in parts:
            for info in reader.tensors():
                name = prefix + info.name
                if name in self._where:
                    raise ModelFileError(f"{path}: tensor {quoted(name)} is in {self._where[name][0].path} and {reader.path}")
                self._where[name] = (reader, info.name)
                self._infos.append(TensorInfo(name, info.dtype, info.shape))

    def tensors(self) -> Sequence[TensorInfo]:
        return list(self._infos)

    def array(self, name: str) -> np.ndarray:
        reader, inner = self._where[name]
        return reader.array(inner)

    def problems(self) -> list[str]:
        return list(self._problems)

    def close(self) -> None:
        for _, reader in self._parts:
            reader.close()


def _inside(folder: Path, relative: str, what: str) -> Path:
    """`folder/relative`, refusing absolute paths, `..` and symlinks that lead out of `folder`."""
    candidate = Path(relative)
    if not relative or candidate.is_absolute() or ".." in candidate.parts:
        raise ModelFileError(f"{what} {quoted(relative)} is not a plain path inside {folder}")
    path = folder / candidate
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        raise ModelFileError(f"{what} {quoted(relative)} cannot be resolved (symlink loop?)") from None
    if not resolved.is_relative_to(folder.resolve()):
        raise ModelFileError(f"{what} {quoted(relative)} leads outside {folder}")
    return path


@dataclass(frozen=True)
class ShardIndex:
    """A validated `*.index.json`: tensor name → shard file name, and the shards in first-use order."""

    path: Path
    metadata: dict[str, str]
    weight_map: dict[str, str]

    @property
    def shards(self) -> list[str]:
        return list(dict.fromkeys(self.weight_map.values()))


def read_shard_index(path: Path) -> ShardIndex:
    """Parse and validate a sharded checkpoint's index (shard files are not opened)."""
    document = read_json_object(path, MAX_JSON_BYTES)
    weight_map, metadata = document.get("weight_map"), document.get("metadata", {})
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelFileError(f"{path}: weight_map must map tensor names to shard file names")
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: metadata must be a JSON object")
    for shard in set(weight_map.values()):
        _inside(path.parent, shard, f"{path}: shard")
    text_metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return ShardIndex(path, text_metadata, weight_map)


def open_sharded(index_path: Path, prefix: str = "") -> CompositeReader:
    """One model from a sharded index; its tensors keep their names (plus `prefix`)."""
    index = read_shard_index(index_path)
    problems: list[str] = []
    claimed_by: dict[str, set[str]] = {}  # one pass: asking the whole map per shard was shards × tensors
    for name, owner in index.weight_map.items():
        claimed_by.setdefault(owner, set()).add(name)
    with ExitStack() as stack:
        parts = []
        for shard in index.shards:
            shard_path = index_path.parent / shard
            if not shard_path.is_file():
                raise ModelFileError(f"{index_path}: shard {quoted(shard)} does not exist")
            reader = stack.enter_context(open_model_file(shard_path))
            names = {info.name for info in reader.tensors()}
            claimed = claimed_by[shard]
            if missing := sorted(claimed - names):
                raise ModelFileError(f"{index_path}: shard {quoted(shard)} lacks {len(missing)} tensors it is mapped to, e.g. {quoted(missing[0])}")
            for name in sorted(names - claimed):
                if name in index.weight_map:
                    raise ModelFileError(f"{index_path}: tensor {quoted(name)} is in {quoted(shard)} but mapped to {quoted(index.weight_map[name])}")
                problems.append(f"tensor {quoted(name)} in {quoted(shard)} is not listed in the index")
            parts.append((prefix, reader))
        formats = sorted({reader.format for _, reader in parts})
        composite = CompositeReader(index_path, f"sharded-{'+'.join(formats) or 'empty'}", parts, index.metadata, problems)
        stack.pop_all()
    return composite


_WEIGHT_KINDS = (  # in order of preference
    re.compile(r"(?P<stem>.+)\.safetensors\.index(?:\.(?P<variant>[^.]+))?\.json", re.IGNORECASE),
    re.compile(r"(?P<stem>.+)\.safetensors", re.IGNORECASE),
    re.compile(r"(?P<stem>.+)\.bin\.index(?:\.(?P<variant>[^.]+))?\.json", re.IGNORECASE),
    re.compile(r"(?P<stem>.+)\.(?:bin|ckpt|pt|pth)", re.IGNORECASE),
)


def _variant_and_rank(name: str) -> tuple[str, int] | None:
    """A weights file name's variant ('fp16' in `model.fp16.safetensors` and `model.safetensors.index.fp16.json`, '' if none) and preference rank."""
    for rank, pattern in enumerate(_WEIGHT_KINDS):
        if match := pattern.fullmatch(name):
            stem = match["stem"]
            return match.groupdict().get("variant") or (stem.rsplit(".", 1)[1] if "." in stem else ""), rank
    return None


def choose_weights(folder: Path) -> tuple[Path, list[str]]:
    """The one weights file (or index) a single-model folder holds, and notes on files left unread.

    Prefers the plain variant over `fp16`/`ema`/..., and safetensors over sharded .bin over .bin;
    shards named by an index are not candidates of their own.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    candidates = {p: vr for p in files if (vr := _variant_and_rank(p.name)) is not None}
    for index in [p for p in candidates if p.name.lower().endswith(".json")]:
        try:
            shards = read_shard_index(index).shards
        except ModelFileError:
            continue  # reported when the index itself is opened
        for shard in shards:
            candidates.pop(folder / shard, None)
    if not candidates:
        raise ModelFileError(f"{folder}: no model weights in this folder")
    variants = sorted({variant for variant, _ in candidates.values()})
    if "" not in variants and len(variants) > 1:
        raise ModelFileError(f"{folder}: several weight variants ({', '.join(variants)}) and no plain one")
    variant = "" if "" in variants else variants[0]
    best = min(rank for v, rank in candidates.values() if v == variant)
    chosen = [p for p, (v, rank) in candidates.items() if v == variant and rank == best]
    if len(chosen) > 1:
        raise ModelFileError(f"{folder}: holds several models ({', '.join(p.name for p in chosen[:5])}); open them one by one")
    notes = [f"not read: {p.name}" for p in candidates if p != chosen[0]]
    return chosen[0], notes


def _open_weights(path: Path, prefix: str) -> ModelReader:
    if path.name.lower().endswith(".json"):
        return open_sharded(path, prefix)
    reader = open_model_file(path)
    return CompositeReader(path, reader.format, [(prefix, reader)], reader.metadata) if prefix else reader


def open_diffusers(folder: Path) -> CompositeReader:
    """A diffusers pipeline folder as one model: every component with weights, names prefixed `component/`."""
    index_path = folder / DIFFUSERS_INDEX
    index = read_json_object(index_path, MAX_JSON_BYTES)
    metadata = {k: v for k, v in index.items() if k.startswith("_") and isinstance(v, str)}
    problems: list[str] = []
    with ExitStack() as stack:
        parts: list[tuple[str, ModelReader]] = []
        for component, spec in index.items():
            if component.startswith("_") or not isinstance(spec, list) or not any(spec):
                continue  # pipeline settings, or a component left out (`[null, null]`)
            if not _COMPONENT_NAME.fullmatch(component) or component in (".", ".."):
                raise ModelFileError(f"{index_path}: component name {quoted(component)} is not a plain folder name")
            component_dir = _inside(folder, component, f"{index_path}: component")
            if not component_dir.is_dir():
                problems.append(f"component {quoted(component)} has no folder")
                continue
            try:
                weights, notes = choose_weights(component_dir)
            except ModelFileError as exc:
                if "no model weights" not in str(exc):
                    raise
                continue  # tokenizers, schedulers and feature extractors carry no weights
            _inside(folder, f"{component}/{weights.name}", f"{index_path}: weights")  # a symlink out, as for shards
            problems += [f"{component}/: {note}" for note in notes]
            reader = stack.enter_context(_open_weights(weights, f"{component}/"))
            parts.append(("", reader))
        if not parts:
            raise ModelFileError(f"{folder}: diffusers folder without any component weights")
        composite = CompositeReader(folder, "diffusers", parts, metadata, problems)
        stack.pop_all()
    return composite


def open_folder(folder: Path) -> ModelReader:
    """A folder holding one model: a diffusers pipeline, a sharded checkpoint or one weights file."""
    if (folder / DIFFUSERS_INDEX).is_file():
        return open_diffusers(folder)
    weights, notes = choose_weights(folder)
    reader = _open_weights(weights, "")
    if notes:
        return CompositeReader(folder, reader.format, [("", reader)], reader.metadata, notes)
    return reader


def walk_models(folder: Path) -> Iterator[Path]:
    """Every model below `folder`, sorted: diffusers folders and sharded indexes count as one model each."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        here = Path(root)
        if DIFFUSERS_INDEX in files:
            dirs.clear()
            yield here
            continue
        shards: set[str] = set()
        for name in sorted(files):
            if name.lower().endswith(INDEX_SUFFIXES):
                try:
                    shards.update(read_shard_index(here / name).shards)
                except ModelFileError:
                    pass  # the index is still yielded; opening it reports what is wrong
        for name in sorted(files):
            if name.lower().endswith(INDEX_SUFFIXES + MODEL_SUFFIXES) and name not in shards:
                yield here / name
