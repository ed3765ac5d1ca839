"""The project's own promises: packaging lists every package, the README's test command is CI's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("fingerprint", "crawler", "hashlists", "api")


def test_every_package_folder_is_packaged() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        "modelsieve." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed, f"pyproject.toml packages differ from the folders: {sorted(found ^ listed)}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    # Besides shell settings, CI may only start the services the tests use (`bash .ci/NAME` scripts).
    ci_commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "bash .ci/"))
    ]
    readme = (ROOT / "README.md").read_text()
    setup = re.search(r"## Set up\n(.*?)\n## ", readme, re.S)
    assert setup is not None
    readme_commands = [line for line in setup.group(1).splitlines() if line.startswith("python3 ")]
    assert len(readme_commands) == 2, readme_commands
    assert ci_commands == [readme_commands[1]]
