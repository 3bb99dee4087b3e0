"""The shape of the tree: documented modules, no import cycles, small modules, pure logic pure.

These keep docs/ARCHITECTURE.md true and the house rules of the code from eroding silently.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "router"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
MAX_LINES = 400

PURE = ("router.context", "router.sources", "router.routing", "router.numbers", "router.callmodel")
"""Decision logic: importing these must not pull in any I/O library."""
IO_LIBRARIES = ("aiohttp", "redis", "prometheus_client", "structlog")


def modules() -> Iterator[tuple[str, Path]]:
    """``(dotted name, path)`` of every module of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its text (TYPE_CHECKING blocks too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def test_every_module_is_in_the_architecture_table() -> None:
    """docs/ARCHITECTURE.md names every module under router/ (by path) in its table."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\|\s*`(router/[\w/]+\.py)`", text, flags=re.MULTILINE))
    present = {str(path.relative_to(ROOT)) for _, path in modules()}
    assert sorted(present - listed) == []
    assert sorted(listed - present) == []  # nor a module that no longer exists


def test_no_import_cycles() -> None:
    """No module of the package imports itself back, however indirectly (type-only too)."""
    table = dict(modules())
    known = set(table)
    graph = {name: imports_of(name, path, known) for name, path in table.items()}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []


def test_no_module_over_400_lines() -> None:
    """Every module reads in one sitting; past 400 lines it is split by concern."""
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for _, path in modules()
    }
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_decision_logic_imports_no_io_library() -> None:
    """Importing the pure decision modules loads no HTTP, Redis, metrics or logging library."""
    code = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in PURE)
        + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(IO_LIBRARIES)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_no_reference_outside_the_repository() -> None:
    """Code, tests and docs cite the project's own docs, never a file a clone does not have."""
    outside = re.compile(r"\.\./shared|SPEC\.md|SPEC §")
    offenders = [
        str(path.relative_to(ROOT))
        for pattern in ("router/**/*.py", "tests/**/*.py", "tests/data/*", "docs/*", "rules/*")
        for path in ROOT.glob(pattern)
        if path.is_file()
        and path != Path(__file__)
        and outside.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    for name in ("README.md", "CHANGELOG.md", "config.example.yaml"):
        if outside.search((ROOT / name).read_text(encoding="utf-8")):
            offenders.append(name)
    assert offenders == []
