"""The package's floors: no import runs upward (a library importing the renderer, the stages or the
command lines; the renderer importing anything but what renders), read from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "saeft_jax"

# the command lines and the stage plan: they may import everything below them
TOP = {
    "saeft_jax.main",
    "saeft_jax.pipeline",
    "saeft_jax.preflight",
    "saeft_jax.compare",
    "saeft_jax.export",
    "saeft_jax.evaluate",
}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _floor(module: str) -> str:
    if module in TOP:
        return "top"
    if module.startswith("saeft_jax.stages"):
        return "stages"
    if module.startswith("saeft_jax.rendering"):
        return "rendering"
    return "library"


# what each floor must not import
FORBIDDEN = {
    "library": ("saeft_jax.stages", "saeft_jax.rendering", *TOP),
    "rendering": ("saeft_jax.stages", *TOP, "saeft_jax.methods", "saeft_jax.config", "jax"),
    "stages": tuple(TOP),
    "top": (),
}

MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_upward(path):
    module, floor = _module(path), _floor(_module(path))
    upward = sorted(
        name
        for name in _imports(path)
        if any(name == f or name.startswith(f"{f}.") for f in FORBIDDEN[floor]) and not name.startswith(module)
    )
    assert not upward, f"{module} ({floor}) imports {upward}, a floor above it or outside what it may read"


def test_the_floors_are_read_from_real_imports():
    """The check itself: a module known to import the stages is seen doing so."""
    assert any(name.startswith("saeft_jax.stages") for name in _imports(PACKAGE / "pipeline.py"))
    assert "jax" in _imports(PACKAGE / "parallel.py")
