"""The package's shape: no import cycles (computed from the sources), a torch-free core, and each
name-bearing rule in one place. Which layer may import which: tests/test_layers.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fedpilot

PACKAGE = Path(fedpilot.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """Module -> fedpilot modules it imports, anywhere in its body (function-local imports too;
    imports under ``if TYPE_CHECKING:`` never run and are left out)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative import
                    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [node.module])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_is_acyclic() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "fedpilot.runtime.server" in graph["fedpilot.federation"]
    assert "fedpilot.simulation" in graph["fedpilot.cli"]  # a function-local import counts
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_and_the_pure_layers_load_without_torch() -> None:
    code = (
        "import sys\n"
        "from fedpilot.config import load_config, parse_config\n"
        "import fedpilot.planning.allocation, fedpilot.planning.scoring, fedpilot.runtime.server, fedpilot.runtime.validation\n"
        "config = load_config()\n"
        "parse_config({'strategy': 'exclusive', 'federation': {'num_clients': 4, 'budgets': '1GiB'}})\n"
        "config.strategy_settings()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none"


def test_target_names_live_only_in_their_family() -> None:
    """A family's target names (e.g. BERT's "attn_out") appear nowhere else in the package."""
    from fedpilot.families import FAMILIES

    for family in FAMILIES.values():
        folder = PACKAGE / "families" / family.runtime.split(".")[2]
        for target in family.targets:
            if target in ("query", "key", "value"):  # plain words used in prose too
                continue
            users = [p for p in PACKAGE.rglob("*.py") if f'"{target}"' in p.read_text() and folder not in p.parents]
            assert not users, f"{target!r} appears outside {folder}: {users}"


def test_module_names_are_split_only_in_core_keys() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "core" / "keys.py":
            continue
        text = path.read_text()
        if 'split(".", 1)' in text or "split('.', 1)" in text or 'partition(".")' in text:
            offenders.append(path)
    assert not offenders
