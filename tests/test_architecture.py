"""The import rules of docs/ARCHITECTURE.md, checked on every import in the code.

Every ``import`` and ``from ... import`` of the package and of ``utils/`` is read from the
source (module level, inside functions and under ``TYPE_CHECKING`` alike), mapped to the
top-level package it comes from and goes to, and checked against :data:`ALLOWED`. A
violation fails naming the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trading_agents"
UTILS = ROOT / "utils"

#: The foundation every layer above the core may use.
FOUNDATION = {"config", "errors", "fsutil"}

#: Which top-level packages (or modules) of ``trading_agents`` each one may import, besides
#: itself; ``utils`` is the LLM integration layer. ``cli`` may import anything.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "fsutil": {"errors", "utils"},
    "config": {"errors", "utils"},
    "core": {"config", "errors"},
    "journal": {"core"} | FOUNDATION,
    "market": FOUNDATION,
    "model_files": {"utils"} | FOUNDATION,
    "agents": {"core", "market", "model_files", "utils"} | FOUNDATION,
    "backtest": {"core", "journal", "agents", "market", "model_files"} | FOUNDATION,
    "session": {"core", "journal", "agents", "market"} | FOUNDATION,
    "serve": {"agents", "model_files", "utils"} | FOUNDATION,
    "grid": {"core", "journal", "agents", "market", "model_files", "backtest", "utils"} | FOUNDATION,
    "bench": {"core", "journal", "agents", "market", "model_files", "backtest", "session", "grid", "utils"}
    | {"dashboard", "serve"}
    | FOUNDATION,
    "dashboard": {"core", "journal", "agents", "model_files", "backtest", "grid", "serve"} | FOUNDATION,
    "cli": {"*"},
}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _layer(module: str) -> str | None:
    """``trading_agents.core.engine`` -> ``core``; ``utils.llm_integration.x`` -> ``utils``."""
    parts = module.split(".")
    if parts[0] == "trading_agents" and len(parts) > 1:
        return parts[1]
    if parts[0] == "utils":
        return "utils"
    return None


def _package_files() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).parts
        if rel == ("__init__.py",):
            continue
        out.append((rel[0].removesuffix(".py"), path))
    return out


def _edges() -> dict[str, dict[str, list[str]]]:
    """layer -> imported layer -> ``file:line`` of each import."""
    edges: dict[str, dict[str, list[str]]] = {}
    for layer, path in _package_files():
        for line, module in _imports(path):
            target = _layer(module)
            if target is not None and target != layer:
                where = f"{path.relative_to(ROOT)}:{line}"
                edges.setdefault(layer, {}).setdefault(target, []).append(where)
    return edges


def test_every_package_has_a_rule() -> None:
    layers = {layer for layer, _ in _package_files()}
    missing = sorted(layers - set(ALLOWED))
    assert missing == [], f"declare the allowed imports of {missing} in ALLOWED (and in docs/ARCHITECTURE.md)"


def test_every_import_follows_the_layer_rules() -> None:
    broken = []
    for layer, targets in _edges().items():
        allowed = ALLOWED.get(layer, set())
        if "*" in allowed:
            continue
        for target, places in targets.items():
            if target not in allowed:
                broken += [f"{where}: {layer} may not import {target}" for where in places]
    assert broken == [], "\n".join(broken)


def test_nothing_imports_the_cli_but_the_console_entry_point() -> None:
    broken = [
        f"{where}: {layer} imports cli"
        for layer, targets in _edges().items()
        if layer != "cli"
        for where in targets.get("cli", [])
    ]
    assert broken == [], "\n".join(broken)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"trading-agents": "trading_agents.cli.app:main"}


def test_the_llm_layer_imports_nothing_from_trading_agents() -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line}: utils imports {module}"
        for path in sorted(UTILS.rglob("*.py"))
        for line, module in _imports(path)
        if module.split(".")[0] == "trading_agents"
    ]
    assert broken == [], "\n".join(broken)


def test_there_are_no_cycles_between_packages() -> None:
    graph = {layer: set(targets) - {"utils"} for layer, targets in _edges().items()}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(" -> ".join([*trail[trail.index(node) :], node]))
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*trail, node])

    for start in sorted(graph):
        visit(start, [])
    assert cycles == [], "\n".join(sorted(set(cycles)))


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([base.name, *parts])


def _imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an import names, ``from pkg import mod`` counted as ``pkg.mod`` too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def module_cycles(*bases: Path) -> list[str]:
    """Import circles between two or more modules of one package (``a -> b -> a``), each with
    the file and line of every import on it; imports inside functions count."""
    files = {_module_name(p, base): (p, base) for base in bases for p in sorted(base.rglob("*.py"))}
    graph: dict[str, dict[str, str]] = {}
    for name, (path, base) in files.items():
        package = name.rsplit(".", 1)[0]
        if path.name == "__init__.py":  # a package's own __init__ re-exports its modules
            continue
        for line, target in _imported_modules(path):
            if target in files and target != name and target.rsplit(".", 1)[0] == package:
                where = f"{path.relative_to(base.parent)}:{line}"
                graph.setdefault(name, {}).setdefault(target, where)
    cycles: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            loop = trail[trail.index(node) :]
            turn = loop.index(min(loop))  # one spelling per circle
            loop = loop[turn:] + loop[:turn]
            cycles.add(
                " -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(loop, [*loop[1:], loop[0]], strict=True))
            )
            return
        if len(trail) > 12:
            return
        for nxt in sorted(graph.get(node, {})):
            visit(nxt, [*trail, node])

    for start in sorted(graph):
        visit(start, [])
    return sorted(cycles)


def test_there_are_no_cycles_between_modules_of_one_package() -> None:
    cycles = module_cycles(PACKAGE, UTILS)
    assert cycles == [], "import circles:\n" + "\n".join(cycles)


def test_the_module_cycle_check_finds_a_planted_circle(tmp_path: Path) -> None:
    """Two modules of one package that import each other (one of them inside a function)."""
    pkg = tmp_path / "planted" / "desk"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "clients.py").write_text("def build():\n    from planted.desk.server import serve\n")
    (pkg / "server.py").write_text("from planted.desk.clients import build\n")
    (pkg / "alone.py").write_text("from planted.desk import server\n")
    cycles = module_cycles(tmp_path / "planted")
    assert len(cycles) == 1
    assert cycles[0].startswith("planted.desk.clients (")
    assert "planted.desk.server (" in cycles[0] and "alone" not in cycles[0]


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("from trading_agents.cli.app import main\n", "core may not import cli"),
        ("def f():\n    import trading_agents.journal.sqlite\n", "core may not import journal"),
    ],
)
def test_the_checker_finds_a_planted_violation(tmp_path: Path, source: str, rule: str) -> None:
    """The rules are only worth something if a violation, even inside a function, is seen."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    found = [
        f"core may not import {_layer(module)}"
        for _, module in _imports(planted)
        if _layer(module) not in ALLOWED["core"]
    ]
    assert found == [rule]
