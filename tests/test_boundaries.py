"""The domain packages build on each other in one direction, never in a loop, and
only one module talks to arq."""

from __future__ import annotations

import ast
from pathlib import Path

import service

SERVICE = Path(service.__file__).parent
DOMAINS = ("auth", "idempotency", "tasks", "records", "runs", "notifications", "health")


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def _domain_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {domain: set() for domain in DOMAINS}
    for domain in DOMAINS:
        for path in (SERVICE / domain).rglob("*.py"):
            for module in _imported_modules(path):
                parts = module.split(".")
                if parts[0] == "service" and len(parts) > 1 and parts[1] in DOMAINS:
                    graph[domain].add(parts[1])
        graph[domain].discard(domain)
    return graph


def test_domains_import_each_other_without_a_loop() -> None:
    graph = _domain_graph()
    assert graph["tasks"].isdisjoint({"records", "runs"}), graph["tasks"]
    assert not graph["notifications"], graph["notifications"]  # everyone may emit events
    visiting: list[str] = []

    def visit(domain: str) -> None:
        assert domain not in visiting, f"import loop: {' -> '.join([*visiting, domain])}"
        visiting.append(domain)
        for other in sorted(graph[domain]):
            visit(other)
        visiting.pop()

    for domain in DOMAINS:
        visit(domain)


def test_only_the_queue_module_imports_arq() -> None:
    importers = sorted(
        str(path.relative_to(SERVICE))
        for path in SERVICE.rglob("*.py")
        if any(module.split(".")[0] == "arq" for module in _imported_modules(path))
    )
    assert importers == ["broker/queue.py"]
