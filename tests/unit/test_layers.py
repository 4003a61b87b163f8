"""The architecture holds: what each product package may import (DESIGN.md, "Layout").

Imports are read from the source (``ast``) of every module of the product packages:
module-level and function-level ones (a lazy import still runs when its function does),
not those under ``if TYPE_CHECKING:``. One test also imports the node's side for real and
looks at ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The product's top-level packages (``[tool.setuptools.packages.find]``).
PACKAGES = (
    "core",
    "dicom_node",
    "inference",
    "models",
    "workers",
    "node_services",
    "monitor",
    "pacs_ai",
)
#: What each package may import besides itself. ``pacs_ai`` (the command line) wires the
#: processes together and may import any of them.
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "models": frozenset({"core"}),
    "inference": frozenset({"core", "models"}),
    # At completion the node checks a routed model's declared inputs against the series'
    # headers (models.acceptance), so that it never queues a series the model refuses.
    "dicom_node": frozenset({"core", "models"}),
    "node_services": frozenset({"core", "dicom_node"}),
    "workers": frozenset({"core", "inference", "models"}),
    "monitor": frozenset({"core"}),
    "pacs_ai": frozenset(PACKAGES),
}
#: Frameworks only a worker's backends import.
HEAVY = ("torch", "onnxruntime", "tensorrt", "inference.backends")
#: What the node's side runs (``pacs-ai serve`` and ``pacs-ai status``): never heavy.
NODE_SIDE = ("core", "dicom_node", "node_services", "monitor")
#: The command line's module, and its command that runs the node.
CLI, SERVE = "pacs_ai.cli", "serve"
LEDGER = "core.ledger"
#: What may be used of SQLAlchemy outside the ledger: its errors and URL parsing, no SQL.
SQLALCHEMY_OUTSIDE_LEDGER = ("sqlalchemy.exc", "sqlalchemy.engine.make_url")


@dataclass(frozen=True, slots=True)
class Import:
    module: str
    #: The names imported (``from module import names``); empty for ``import module``.
    names: tuple[str, ...]
    line: int

    def targets(self) -> Iterator[str]:
        """The module, and each name as a submodule (``from core import ledger``)."""
        yield self.module
        for name in self.names:
            yield f"{self.module}.{name}"


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


@cache
def imports_of(module: str) -> tuple[Import, ...]:
    path = modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for child in ast.walk(statement)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [Import(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append(Import(base, tuple(a.name for a in node.names), node.lineno))
    return tuple(found)


def top(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_heavy(module: str) -> bool:
    return any(within(module, heavy) for heavy in HEAVY)


def reachable(roots: list[str]) -> dict[str, list[str]]:
    """Every product module ``roots`` import, directly or not, with the chain to it."""
    known = modules()
    chains = {root: [root] for root in roots}
    stack = list(roots)
    while stack:
        module = stack.pop()
        for statement in imports_of(module):
            for target in statement.targets():
                if target in known and target not in chains:
                    chains[target] = [*chains[module], target]
                    stack.append(target)
    return chains


def serve_path() -> list[str]:
    """What ``pacs-ai serve`` imports: the command line module's own imports, those of
    its ``serve`` command and of its private helpers (not those of the other commands)."""
    tree = ast.parse(modules()[CLI].read_text(encoding="utf-8"))
    functions = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and (node.name == SERVE or node.name.startswith("_"))
    ]
    statements = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    statements += [
        node
        for function in functions
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    lines = {node.lineno for node in statements}
    roots = {
        target
        for statement in imports_of(CLI)
        if statement.line in lines
        for target in statement.targets()
        if target in modules()
    }
    return sorted(roots)


def heavy_imports(roots: list[str]) -> list[str]:
    found = []
    for module, chain in reachable(roots).items():
        for statement in imports_of(module):
            if is_heavy(statement.module) or any(is_heavy(t) for t in statement.targets()):
                found.append(
                    f"{' -> '.join(chain)} imports {statement.module} (line {statement.line})"
                )
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for module in modules():
        for statement in imports_of(module):
            if top(statement.module) in PACKAGES and top(statement.module) != top(module):
                where = f"{module}:{statement.line} imports {statement.module}"
                edges.setdefault((top(module), top(statement.module)), []).append(where)
    return edges


def writes_sql(statement: Import) -> bool:
    """More of SQLAlchemy than its errors and URL parsing."""
    if not within(statement.module, "sqlalchemy"):
        return False
    used = [f"{statement.module}.{name}" for name in statement.names] or [statement.module]
    return not all(any(within(u, a) for a in SQLALCHEMY_OUTSIDE_LEDGER) for u in used)


def test_no_module_outside_the_ledger_reads_its_tables_or_writes_sql() -> None:
    offences = []
    for module, path in modules().items():
        if within(module, LEDGER):
            continue
        for statement in imports_of(module):
            names = [t for t in statement.targets() if t.endswith(("_table", ".metadata"))]
            if within(statement.module, f"{LEDGER}.schema") or (
                within(statement.module, LEDGER) and names
            ):
                offences.append(f"{module}:{statement.line} imports {statement.module}")
            if writes_sql(statement):
                offences.append(f"{module}:{statement.line} imports {statement.module}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offences += [
            f"{module}:{node.lineno} uses {ast.unparse(node)}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr == "engine"
            and "ledger" in ast.unparse(node.value)
        ]

    assert offences == [], "the ledger's data is read and written only through core.ledger"


def test_the_node_side_and_the_serve_path_never_import_a_framework_or_a_backend() -> None:
    node_side = [m for m in modules() if any(within(m, p) for p in NODE_SIDE)]

    assert "pacs_ai.service" in serve_path()
    assert heavy_imports(node_side) == []
    assert heavy_imports(serve_path()) == []


def test_importing_what_serve_runs_loads_no_framework() -> None:
    # The static reading above misses an import made by a library or by importlib.
    script = f"""
import importlib, pkgutil, sys
for name in {[CLI, *serve_path()]!r}:
    importlib.import_module(name)
for package in {NODE_SIDE!r}:
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(info.name)
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY[:3]!r}
                      or m.startswith({HEAVY[3]!r}))))
"""
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == []


def test_each_package_imports_only_the_packages_below_it() -> None:
    outside = {
        edge: where for edge, where in package_edges().items() if edge[1] not in ALLOWED[edge[0]]
    }

    assert outside == {}


def test_no_two_packages_import_each_other() -> None:
    edges = package_edges()
    cycles = sorted({tuple(sorted(edge)) for edge in edges if (edge[1], edge[0]) in edges})

    assert cycles == []


def test_node_services_and_workers_do_not_import_each_other() -> None:
    edges = package_edges()

    assert edges.get(("node_services", "workers"), []) == []
    assert edges.get(("workers", "node_services"), []) == []
