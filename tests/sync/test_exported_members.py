"""`service.sync` is a library: its `__init__` is the surface the rest of the service
uses, and nothing else of it is reached from outside."""

from __future__ import annotations

import ast
from pathlib import Path

import service.sync

SERVICE = Path(service.sync.__file__).parent.parent


def _imports_from_outside() -> list[tuple[Path, str, list[str]]]:
    """(file, module, names) of every `from service.sync... import` outside the engine."""
    found = []
    for path in SERVICE.rglob("*.py"):
        if path.is_relative_to(SERVICE / "sync"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service.sync"):
                found.append((path, node.module or "", [alias.name for alias in node.names]))
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("service.sync"):
                        found.append((path, alias.name, []))
    return found


def test_the_service_imports_the_engine_only_through_its_surface() -> None:
    imports = _imports_from_outside()
    assert imports, "the service uses the engine"
    deep = [(str(path), module) for path, module, _ in imports if module != "service.sync"]
    assert deep == []


def test_every_exported_name_exists_and_is_used_outside_the_engine() -> None:
    exported = set(service.sync.__all__)
    assert len(exported) == len(service.sync.__all__), "no name twice"
    for name in exported:
        assert hasattr(service.sync, name), name
    used = {name for _, _, names in _imports_from_outside() for name in names}
    assert used <= exported, f"imported but not exported: {used - exported}"
    assert exported <= used, f"exported but used by nobody: {exported - used}"


def test_the_engine_does_not_know_the_web_framework_or_the_database() -> None:
    for path in (SERVICE / "sync").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            for module in modules:
                top = module.split(".")[0]
                assert top not in {"fastapi", "starlette", "sqlalchemy", "sqlmodel", "arq"}, (
                    f"{path.name} imports {module}"
                )
                assert not module.startswith("service.") or module.startswith("service.sync"), (
                    f"{path.name} imports {module}"
                )
