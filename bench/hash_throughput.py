"""Whole-file hashing throughput: `modelsieve hash` against public tools, in the same run.

    nice -n 19 .venv/bin/python bench/hash_throughput.py [--size-gib 2] [--rounds 3]

Writes a safetensors file of random fp16 weights in a temporary folder (deleted afterwards),
reads it once to warm the page cache, then times, round after round in interleaved order:
`modelsieve hash` (the CLI, default digests), `hash_file` in-process (default digests, and
without AutoV3), Python's hashlib SHA-256 alone (`hashlib.file_digest`), `sha256sum`, `b3sum`
and `md5sum`. Prints each tool's best GB/s (10^9 bytes/s), the ratios the README quotes, and
the CPU time each spends per GB: on a loaded machine the wall-clock ratios say more about the
other load than about the tools, the CPU cost does not.
Installs Debian's `b3sum` with apt-get when it is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelsieve.fingerprint.digests import DEFAULT_DIGESTS, hash_file

TENSOR_BYTES = 64 * 1024 * 1024
MODELSIEVE = str(Path(sys.executable).with_name("modelsieve"))


def write_random_safetensors(path: Path, size: int) -> None:
    """About `size` bytes of random fp16 tensors (64 MiB each) with a valid safetensors header."""
    count = max(1, size // TENSOR_BYTES)
    elements = TENSOR_BYTES // 2
    header = {
        f"model.layers.{i}.weight": {"dtype": "F16", "shape": [elements], "data_offsets": [i * TENSOR_BYTES, (i + 1) * TENSOR_BYTES]}
        for i in range(count)
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text)
        for _ in range(count):
            handle.write(rng.standard_normal(elements, dtype=np.float32).astype(np.float16).tobytes())


def ensure_b3sum() -> str | None:
    """The b3sum executable, installed from Debian's packages if missing (None if that fails)."""
    if shutil.which("b3sum") is None:
        print("b3sum missing: apt-get update && apt-get install -y b3sum", file=sys.stderr)
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "b3sum"]):
            if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
                print(f"could not run {' '.join(command)}; b3sum is left out", file=sys.stderr)
                return None
    return shutil.which("b3sum")


def run_tool(command: list[str]) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    return run


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def hashlib_sha256(path: Path) -> None:
    with open(path, "rb") as handle:
        hashlib.file_digest(handle, "sha256")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the CLI tools)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0, help="size of the generated file (default 2 GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; each tool's best is reported")
    args = parser.parse_args()
    b3sum = ensure_b3sum()

    with tempfile.TemporaryDirectory(prefix="modelsieve-bench-") as folder:
        path = Path(folder) / "random.safetensors"
        write_random_safetensors(path, int(args.size_gib * 2**30))
        size = path.stat().st_size
        no_autov3 = [name for name in DEFAULT_DIGESTS if name != "autov3"]
        candidates: dict[str, Callable[[], None]] = {
            "modelsieve hash (CLI, default digests)": run_tool([MODELSIEVE, "hash", "--json", str(path)]),
            "hash_file in-process, default digests": lambda: hash_file(path),
            "hash_file in-process, without autov3": lambda: hash_file(path, no_autov3),
            "hashlib SHA-256 alone": lambda: hashlib_sha256(path),
            "sha256sum": run_tool(["sha256sum", str(path)]),
            "md5sum": run_tool(["md5sum", str(path)]),
        }
        if b3sum:
            candidates["b3sum (all cores)"] = run_tool([b3sum, str(path)])
            candidates["b3sum --num-threads 1"] = run_tool([b3sum, "--num-threads", "1", str(path)])

        hashlib_sha256(path)  # warm the page cache
        load_before = os.getloadavg()
        best: dict[str, float] = {name: float("inf") for name in candidates}
        cpu: dict[str, float] = {name: float("inf") for name in candidates}
        for _ in range(args.rounds):
            for name, run in candidates.items():
                cpu_start, start = cpu_seconds(), time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - start)
                cpu[name] = min(cpu[name], cpu_seconds() - cpu_start)
        load_after = os.getloadavg()

    rate = {name: size / seconds / 1e9 for name, seconds in best.items()}
    cpu_per_gb = {name: seconds / (size / 1e9) for name, seconds in cpu.items()}
    print(f"file: {size:,} bytes of random fp16 safetensors, in the page cache; best of {args.rounds} rounds")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    baseline = rate["hashlib SHA-256 alone"]
    print(f"  {'':40s} {'wall':>11s}   {'vs hashlib':>10s}   CPU-seconds per GB (all threads; load-independent)")
    for name, value in rate.items():
        print(f"  {name:40s} {value:6.2f} GB/s   {value / baseline:9.2f}x   {cpu_per_gb[name]:.2f}")
    print(f"target (modelsieve default digests >= 0.8x hashlib SHA-256): CLI {rate['modelsieve hash (CLI, default digests)'] / baseline:.2f}x, "
          f"in-process {rate['hash_file in-process, default digests'] / baseline:.2f}x, "
          f"without autov3 {rate['hash_file in-process, without autov3'] / baseline:.2f}x")


if __name__ == "__main__":
    main()
