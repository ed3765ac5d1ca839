"""The four packages type-check under mypy, with the settings in pyproject.toml's [tool.mypy].

The editable install maps `modelsieve.<folder>` onto the top-level folders with an import hook,
which mypy cannot see; the test therefore points mypy at a `modelsieve/` folder of symlinks to
them, so every module is checked under the name it is imported by.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("fingerprint", "hashlists", "crawler", "api")


def test_the_packages_type_check(tmp_path: Path) -> None:
    tree = tmp_path / "modelsieve"
    tree.mkdir()
    for top in TOP_LEVEL:
        (tree / top).symlink_to(ROOT / top, target_is_directory=True)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "modelsieve"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "No module named mypy" not in run.stderr, "mypy is in the test extra: pip install -e '.[test]'"
    assert run.returncode == 0, run.stdout + run.stderr
    modules = 1 + sum(1 for top in TOP_LEVEL for _ in (ROOT / top).rglob("*.py"))  # 1: the namespace itself
    assert f"no issues found in {modules} source files" in run.stdout, run.stdout  # every module was read
