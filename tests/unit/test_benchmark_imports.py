"""The benchmarks stand on their own: they import nothing from ``tests/`` (what both use
lives in ``benchmarks/_support``, which the tests re-export)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_no_benchmark_imports_anything_from_the_tests() -> None:
    scripts = sorted(BENCHMARKS.rglob("*.py"))

    from_tests = [
        f"{path.relative_to(BENCHMARKS.parent)}:{line} imports {module}"
        for path in scripts
        for line, module in _imported_modules(path)
        if module == "tests" or module.startswith("tests.")
    ]

    assert scripts
    assert from_tests == []
