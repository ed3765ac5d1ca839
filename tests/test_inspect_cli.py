"""`modelsieve inspect` through the real console script: summaries, bad inputs, the marker test."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.torch_files import Call, Global, dumps, state_dict, write_zip

MODELSIEVE = str(Path(sys.executable).with_name("modelsieve"))


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODELSIEVE, *map(str, args)], capture_output=True, text=True, timeout=60)


def _safetensors(path: Path) -> Path:
    save_file({"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float16)}, path, metadata={"ss_output_name": "secret title"})
    return path


def test_inspect_prints_a_summary_without_metadata_values(tmp_path: Path) -> None:
    result = _run("inspect", _safetensors(tmp_path / "m.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "safetensors" in result.stdout and "parameters: 9" in result.stdout and "ss_output_name" in result.stdout
    assert "secret title" not in result.stdout


def test_metadata_keys_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """Keys are the file's choice: raw, ESC sequences could clear the screen or forge a line."""
    keys = {"\x1b[2J\x1b[Hclean": "v", "a\nfake.safetensors: none": "v", "\u202eevil": "v", "ключ 鍵": "v"}
    save_file({"w": np.ones(2, np.float32)}, tmp_path / "m.safetensors", metadata=keys)
    result = _run("inspect", tmp_path / "m.safetensors")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout and len(result.stdout.splitlines()) == 5
    assert "\\x1b[2J\\x1b[Hclean" in result.stdout and "a\\nfake.safetensors: none" in result.stdout
    assert "\\u202eevil" in result.stdout and "ключ 鍵" in result.stdout  # printable text is kept as it is


def test_inspect_json_lines(tmp_path: Path) -> None:
    _safetensors(tmp_path / "a.safetensors")
    write_zip(tmp_path / "b.ckpt", *state_dict({"x": np.arange(6, dtype=np.int64).reshape(2, 3)}))
    result = _run("inspect", "--json", tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["format"], r["tensors"], r["parameters"], r["dtypes"]) for r in records] == [
        ("safetensors", 2, 9, {"F16": 1, "F32": 1}),
        ("pytorch-zip", 1, 6, {"I64": 1}),
    ]
    assert records[0]["metadata_keys"] == ["ss_output_name"] and records[1]["problems"] == []


def _truncated(path: Path) -> None:
    _safetensors(path)
    path.write_bytes(path.read_bytes()[:-5])


def _header_too_long(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")


def _invalid_json(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 9) + b'{"a": [1,')


def _eval_pickle(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", dumps(Call(Global("builtins", "eval"), ("1+1",))))


def _zip_bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", dumps({}))
        archive.writestr("archive/data/0", bytes(10_000_000))


@pytest.mark.parametrize(
    "make, expected",
    [
        (_truncated, "truncated safetensors file"),
        (_header_too_long, "exceeds the bound"),
        (_invalid_json, "not valid JSON"),
        (_eval_pickle, "refusing pickle global builtins.eval"),
        (_zip_bomb, "compressed"),
    ],
)
def test_bad_files_get_one_line_and_a_non_zero_exit(tmp_path: Path, make: object, expected: str) -> None:
    bad = tmp_path / "bad.safetensors"
    make(bad)  # type: ignore[operator]
    result = _run("inspect", bad)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and expected in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"modelsieve: {bad}: ")


def test_a_folder_walk_reports_the_bad_file_and_carries_on(tmp_path: Path) -> None:
    _safetensors(tmp_path / "a.safetensors")
    _invalid_json(tmp_path / "b.safetensors")
    _safetensors(tmp_path / "c.safetensors")
    result = _run("inspect", "--json", tmp_path)
    assert result.returncode == 1
    assert [Path(json.loads(line)["path"]).name for line in result.stdout.splitlines()] == ["a.safetensors", "c.safetensors"]
    assert result.stderr.count("\n") == 1 and "b.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_marker_pickle_never_runs_through_the_cli(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    with zipfile.ZipFile(tmp_path / "evil.ckpt", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {"w": Payload()}}, protocol=2))
    (tmp_path / "evil_legacy.pt").write_bytes(pickle.dumps(Payload(), protocol=4))
    result = _run("inspect", tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("refusing pickle global posix.system") == 2 and "Traceback" not in result.stderr
    assert not marker.exists()


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    result = _run("inspect", tmp_path / "nope.safetensors")
    assert result.returncode == 2
    assert result.stderr.strip() == f"modelsieve: error: {tmp_path / 'nope.safetensors'}: no such file or directory"


def test_help_teaches() -> None:
    result = _run("inspect", "--help")
    assert result.returncode == 0 and "examples:" in result.stdout and "diffusers" in result.stdout
