"""The house as README's Architecture section draws it: which room of sycam imports which.

A room is a sub-package of ``sycam`` (``cli``, ``data``, ``evaluation``, ...) or a top-level module
(``capture``, ``compile``, ...); ``sycam`` itself is the package root (``__version__``, the lazy
``sycam.Explainer``). Every ``import`` counts, also those inside functions. The README table must
be the graph exactly, and below the root nothing imports in a circle.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sycam"


def _room(module: str) -> str | None:
    """The room a module name belongs to (None outside sycam)."""
    parts = module.split(".")
    if parts[0] != "sycam":
        return None
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "sycam"  # the root itself, or one of its names (`from sycam import __version__`)


def imports_by_room() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        room = "sycam" if rel.as_posix() == "__init__.py" else rel.parts[0].removesuffix(".py")
        graph.setdefault(room, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "sycam" else [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                target = _room(name)
                if target is not None and target != room:
                    graph[room].add(target)
    return graph


def readme_table() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- rooms: begin -->")[1].split("<!-- rooms: end -->")[0]
    table: dict[str, set[str]] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        room = cells[0].strip("`/")
        table[room] = set(re.findall(r"`([A-Za-z_]+)/?`", cells[2]))
    return table


def test_readme_draws_the_house_as_it_is() -> None:
    graph, table = imports_by_room(), readme_table()
    assert set(table) == set(graph), f"rooms: README {sorted(table)} vs code {sorted(graph)}"
    wrong = {room: (sorted(table[room]), sorted(graph[room])) for room in graph if table[room] != graph[room]}
    assert not wrong, "README Architecture table vs the imports (README, code): " + repr(wrong)


def test_no_room_below_the_root_imports_in_a_circle() -> None:
    graph = {room: targets - {"sycam"} for room, targets in imports_by_room().items() if room != "sycam"}
    state: dict[str, int] = {}

    def visit(room: str, path: list[str]) -> None:
        state[room] = 1
        for nxt in sorted(graph.get(room, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [room, nxt])
            if nxt not in state:
                visit(nxt, path + [room])
        state[room] = 2

    for room in sorted(graph):
        if room not in state:
            visit(room, [])
