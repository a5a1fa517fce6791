"""Dependencies on purpose: what the code imports is declared, and the lock the image
installs from (requirements.lock) pins every declared dependency inside its range.

A package that only arrives through another one (redis through arq, starlette through
fastapi) leaves with it, or changes under us at that package's pace: declaring it makes
the bound ours. `scripts/check-install` proves the lock installs and satisfies the
wheel (`pip check`); these checks fail sooner, in the suite, with the name at fault.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(line) for line in PROJECT["dependencies"]]
TEST = [Requirement(line) for line in PROJECT["optional-dependencies"]["test"]]


def _imported(folder: Path) -> set[str]:
    """Top-level names of every absolute import under `folder`, at any depth of code."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "service", "tests"}


def _undeclared(folder: Path, declared: list[Requirement]) -> list[str]:
    """Imports under `folder` that no declared distribution provides."""
    allowed = {canonicalize_name(requirement.name) for requirement in declared}
    providers = importlib.metadata.packages_distributions()
    return sorted(
        name
        for name in _imported(folder)
        if not {canonicalize_name(dist) for dist in providers.get(name, [])} & allowed
    )


def test_every_import_in_service_is_a_declared_dependency() -> None:
    assert _undeclared(ROOT / "service", RUNTIME) == []


def test_every_import_in_tests_is_declared_for_tests() -> None:
    assert _undeclared(ROOT / "tests", RUNTIME + TEST) == []


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


@pytest.mark.parametrize("requirement", RUNTIME, ids=str)
def test_the_lock_pins_each_dependency_inside_its_declared_range(
    requirement: Requirement,
) -> None:
    """Run scripts/lock after changing a dependency; the README says so."""
    pinned = _locked().get(canonicalize_name(requirement.name))

    assert pinned is not None, f"{requirement.name} is not in requirements.lock"
    assert requirement.specifier.contains(pinned, prereleases=True), (
        f"requirements.lock pins {requirement.name}=={pinned}, outside {requirement}"
    )


def test_the_lock_names_exactly_the_declared_dependencies_as_the_projects() -> None:
    """A dependency dropped from (or added to) pyproject.toml without running scripts/lock
    shows here: the lock says which entries the project itself asked for."""
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    asked = {
        canonicalize_name(block.split("==")[0])
        for block in blocks
        if "backsync (pyproject.toml)" in block
    }
    assert asked == {canonicalize_name(requirement.name) for requirement in RUNTIME}
