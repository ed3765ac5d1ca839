"""`modelsieve hash` and `modelsieve demo` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import blake3
import numpy as np
import pytest
from safetensors.numpy import save_file

from modelsieve.fingerprint.digests import DEFAULT_DIGESTS, DIGEST_NAMES

MODELSIEVE = str(Path(sys.executable).with_name("modelsieve"))


def modelsieve(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODELSIEVE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def coreutils_digest(tool: str, path: Path) -> str:
    return subprocess.run([tool, "-b", str(path)], check=True, capture_output=True, text=True).stdout.split()[0]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A folder with two safetensors models (one nested), a pickle checkpoint and a non-model file."""
    rng = np.random.default_rng(11)
    save_file({"w": rng.standard_normal((700, 800)).astype(np.float32)}, str(tmp_path / "big.safetensors"))
    (tmp_path / "loras").mkdir()
    save_file({"lora_up.weight": rng.standard_normal((16, 4)).astype(np.float16)}, str(tmp_path / "loras" / "small.safetensors"))
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "notes.txt").write_text("not a model")
    return tmp_path


def test_json_agrees_with_coreutils_and_blake3(models: Path) -> None:
    result = modelsieve("hash", "--json", "--algo", "all", str(models))

    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert [Path(r["path"]).name for r in records] == ["big.safetensors", "old.ckpt", "small.safetensors"]
    for record in records:
        path = Path(record["path"])
        data = path.read_bytes()
        assert list(record) == ["path", "size", "format", *DIGEST_NAMES]
        assert record["size"] == len(data)
        assert record["sha256"] == coreutils_digest("sha256sum", path)
        assert record["md5"] == coreutils_digest("md5sum", path)
        assert record["sha1"] == coreutils_digest("sha1sum", path)
        assert record["blake3"] == blake3.blake3(data).hexdigest()
        assert record["autov2"] == record["sha256"][:10]
    big, ckpt, small = records
    assert big["format"] == small["format"] == "safetensors"
    assert big["autov1"] is not None and small["autov1"] is None  # small is under 2 MiB
    assert ckpt["format"] == "pickle" and ckpt["autov3"] is None  # 6 bytes: shorter than AutoV3's length prefix
    header_end = 8 + int.from_bytes(Path(small["path"]).read_bytes()[:8], "little")
    assert small["autov3"] == hashlib.sha256(Path(small["path"]).read_bytes()[header_end:]).hexdigest()


@pytest.mark.parametrize(
    ("algo", "expected"),
    [
        (None, list(DEFAULT_DIGESTS)),
        ("sha256,autov3", ["sha256", "autov3"]),
        ("+sha1,md5", ["sha256", "blake3", "crc32", "md5", "sha1", "autov1", "autov2", "autov3"]),
        ("ALL", list(DIGEST_NAMES)),
    ],
)
def test_algo_chooses_the_digests(models: Path, algo: str | None, expected: list[str]) -> None:
    args = ["hash", "--json", str(models / "big.safetensors")] + (["--algo", algo] if algo else [])
    result = modelsieve(*args)

    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert list(record)[3:] == expected


def test_globs_and_named_files_of_any_suffix(models: Path) -> None:
    result = modelsieve("hash", "--json", str(models / "**" / "*.safetensors"), str(models / "notes.txt"))

    assert result.returncode == 0, result.stderr
    names = [Path(r["path"]).name for r in json_lines(result.stdout)]
    assert names == ["big.safetensors", "small.safetensors", "notes.txt"]


def test_an_unreadable_file_is_reported_and_the_rest_go_on(models: Path) -> None:
    (models / "broken.safetensors").symlink_to(models / "gone.safetensors")  # dangling: cannot be opened

    result = modelsieve("hash", "--json", str(models))

    assert result.returncode == 1
    assert [Path(r["path"]).name for r in json_lines(result.stdout)] == ["big.safetensors", "old.ckpt", "small.safetensors"]
    (error,) = result.stderr.splitlines()
    assert error.startswith("modelsieve: ") and "broken.safetensors" in error and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algo", "sha512"], "unknown digest sha512"),
        (["--algo", ","], "no digest requested"),
        (["no-such-file.safetensors"], "no-such-file.safetensors: no such file or directory"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(models: Path, args: list[str], message: str) -> None:
    paths = [] if any(a.endswith(".safetensors") for a in args) else [str(models)]
    result = modelsieve("hash", *args, *paths, cwd=models)

    assert result.returncode == 2
    assert result.stdout == ""
    (error,) = result.stderr.splitlines()
    assert error.startswith("modelsieve: error: ") and message in error


def test_human_output_lists_every_digest_and_no_progress_bar_off_a_terminal(models: Path) -> None:
    result = modelsieve("hash", str(models / "loras" / "small.safetensors"))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    size = (models / "loras" / "small.safetensors").stat().st_size
    assert lines[0].endswith(f"small.safetensors  (safetensors, {size:,} bytes)")
    assert [line.split()[0] for line in lines[1:]] == list(DEFAULT_DIGESTS)
    assert "  autov1  -" in lines  # under 2 MiB: no AutoV1, as on Civitai
    assert result.stderr == ""


def test_help_teaches_with_examples() -> None:
    result = modelsieve("hash", "--help")

    assert result.returncode == 0
    for needle in ("examples:", "--algo +md5,sha1", "85114A0D", "0x200000", "16 MiB"):
        assert needle in result.stdout
