"""The design card's layering: data flows fingerprint/ → hashlists/ → crawler/ → api/ only.

Every import statement in every module is read with `ast` — top-level, inside functions (lazy
imports), under `if TYPE_CHECKING:`, and relative ones resolved against the module's package — so
a lower layer importing a higher one fails here whichever way it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("fingerprint", "hashlists", "crawler", "api")  # lowest first


def imported_modules(source: str, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, relative ones resolved in `package`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the modelsieve layer `module` belongs to (None for anything else).

    A bare `import crawler` counts too: it works only from a source checkout, never installed.
    """
    parts = module.split(".")
    if parts[0] == "modelsieve" and len(parts) > 1:
        parts = parts[1:]
    return LAYERS.index(parts[0]) if parts[0] in LAYERS else None


def violations(layer: str) -> list[str]:
    """'file:line imports module' for every import in `layer` of a layer above it."""
    own = LAYERS.index(layer)
    found = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        folder = path.parent.relative_to(ROOT).parts
        for line, module in imported_modules(path.read_text(), ("modelsieve", *folder)):
            target = layer_of(module)
            if target is not None and target > own:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_lower_layers_never_import_higher_ones(layer: str) -> None:
    assert violations(layer) == []


def test_readers_stand_below_the_rest_of_fingerprint() -> None:
    """readers → digests & fingerprints: the hostile-input readers use only the shared errors and dtypes."""
    foundation = {"modelsieve.fingerprint.errors", "modelsieve.fingerprint.dtypes"}
    found = []
    for path in sorted((ROOT / "fingerprint" / "readers").rglob("*.py")):
        for line, module in imported_modules(path.read_text(), ("modelsieve", "fingerprint", "readers")):
            inside = module.startswith("modelsieve.fingerprint.readers") or module in foundation
            if layer_of(module) is not None and not inside:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert found == []


def test_the_check_sees_every_way_of_importing() -> None:
    source = """
import modelsieve.api.cli
from modelsieve.crawler import crawl
from ...api import http
from . import sibling
from .. import names
import numpy

def lazy():
    from modelsieve.hashlists.store import Store
"""
    modules = [name for _, name in imported_modules(source, ("modelsieve", "fingerprint", "readers"))]
    assert modules == [
        "modelsieve.api.cli",
        "modelsieve.crawler",
        "modelsieve.api",
        "modelsieve.fingerprint.readers",
        "modelsieve.fingerprint",
        "numpy",
        "modelsieve.hashlists.store",
    ]
    assert [layer_of(name) for name in modules] == [3, 2, 3, 0, 0, None, 1]
    assert layer_of("crawler.fetch") == 2  # bare names count too
