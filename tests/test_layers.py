"""The package's layers, computed from the sources: every module sits in one layer, and imports only
point down (or sideways, within its layer).

    core -> planning -> data -> families -> strategies -> runtime -> memory -> config -> assembly -> drivers

- core: names, settings, errors, registries, sizes, paths (pure);
- planning: the cost model and the allocators (pure numpy);
- data: corpora, their settings, splits and partitions;
- families: model families, their torch runtimes, and corpora encoded for a model;
- strategies: pure numpy over planning, and the messages strategies exchange with clients;
- runtime: client, server, transport messages, LoRA model, training, evaluation, measurement;
- memory: calibration of the cost model, which measures the runtime;
- config: the pydantic run schema, which validates strategies' options;
- assembly: building a federation and driving its rounds, and recording a run (shared by drivers);
- drivers: the simulator, the Flower apps, the command line, comparisons.

Every import counts, at module level or inside a function; those under ``if TYPE_CHECKING:`` never
run and are left out. Drivers do not import one another's helpers: each imports lower layers only,
except the command dispatcher (``cli``), which may import the other drivers' public names, and
``comparison``, which may call the simulator's public ``run_simulation``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import fedpilot

PACKAGE = Path(fedpilot.__file__).parent

LAYERS = ("core", "planning", "data", "families", "strategies", "runtime", "memory", "config", "assembly", "drivers")

#: module or package -> its layer; a module takes the layer of the longest prefix that names it or a package above it
PLACES = {
    "fedpilot.core": "core",
    "fedpilot.planning": "planning",
    "fedpilot.data": "data",
    "fedpilot.families": "families",
    "fedpilot.strategies": "strategies",
    "fedpilot.runtime": "runtime",
    "fedpilot.memory": "memory",
    "fedpilot.config": "config",
    "fedpilot.configs": "config",  # the embedded YAML defaults config.py reads
    "fedpilot.federation": "assembly",
    "fedpilot.report": "assembly",  # results.json / metrics.csv of a run, written by drive_rounds
    "fedpilot.simulation": "drivers",
    "fedpilot.flower": "drivers",
    "fedpilot.cli": "drivers",
    "fedpilot.comparison": "drivers",
    "fedpilot.__main__": "drivers",
}
ROOT = "fedpilot"  # the package's own __init__: a driver (it holds only the process's environment defaults)

#: the drivers that may import another driver's entry points: importer -> {driver: the names it may take
#: (None: the driver's module and any public name of it: the command dispatcher drives `fedpilot compare`
#: through the comparison's public functions and its defaults)}
DRIVER_ENTRY_POINTS: dict[str, dict[str, frozenset[str] | None]] = {
    "fedpilot.cli": {"fedpilot.simulation": frozenset({"run_simulation"}), "fedpilot.comparison": None},
    "fedpilot.comparison": {"fedpilot.simulation": frozenset({"run_simulation"})},
    "fedpilot.__main__": {"fedpilot.cli": frozenset({"main"})},  # `python -m fedpilot`
}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    names: tuple[str, ...] | None  # the names taken from ``imported`` (None: the module itself)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer of ``module``, None when no entry of PLACES places it."""
    if module == ROOT:
        return "drivers"
    best = max((prefix for prefix in PLACES if module == prefix or module.startswith(prefix + ".")), key=len, default=None)
    return None if best is None else PLACES[best]


def driver_unit(module: str) -> str:
    """The driver a driver module belongs to: ``fedpilot.flower`` for ``fedpilot.flower.codec``, etc."""
    return ".".join(module.split(".")[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        else:
            yield from _imports(node)


def edges(modules: dict[str, Path]) -> list[Edge]:
    """Every import of a fedpilot module by a fedpilot module (to the deepest module it names)."""
    found = []
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                        found.append(Edge(name, alias.name, node.lineno, None))
                continue
            base = node.module or ""
            if node.level:  # relative import
                package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not (base == ROOT or base.startswith(ROOT + ".")):
                continue
            names = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from fedpilot import comparison`: the module itself
                    found.append(Edge(name, sub, node.lineno, None))
                else:
                    names.append(alias.name)
            if names:
                found.append(Edge(name, base, node.lineno, tuple(names)))
    return found


def problems(found: list[Edge]) -> list[str]:
    """Every upward import, every driver importing another's helpers, every unplaced module."""
    out = []
    for e in found:
        here, there = layer_of(e.importer), layer_of(e.imported)
        if here is None or there is None:
            continue  # reported as unplaced
        what = f"{e.importer} imports {e.imported}{'' if e.names is None else ' (' + ', '.join(e.names) + ')'} at line {e.line}"
        if LAYERS.index(there) > LAYERS.index(here):
            out.append(f"upward ({here} -> {there}): {what}")
        elif here == there == "drivers" and driver_unit(e.importer) != driver_unit(e.imported) and e.importer != ROOT:
            allowed = DRIVER_ENTRY_POINTS.get(driver_unit(e.importer), {})
            target = driver_unit(e.imported)
            if target not in allowed:
                out.append(f"driver imports another driver: {what}")
                continue
            names = allowed[target]
            taken = set(e.names or ())
            if e.names is None and names is not None:
                out.append(f"driver imports another driver's module instead of its entry point: {what}")
            elif any(n.startswith("_") for n in taken) or (names is not None and not taken <= names):
                out.append(f"driver imports another driver's helpers: {what}")
    return out


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in all_modules() if layer_of(m) is None)
    assert not unplaced, f"place these modules in a layer (PLACES in {Path(__file__).name}): {unplaced}"


def test_no_module_imports_upward_or_another_drivers_helpers() -> None:
    found = edges(all_modules())
    assert len(found) > 100
    assert any(e.importer == "fedpilot.cli" and e.imported == "fedpilot.simulation" for e in found)  # function-local imports count
    listed = problems(found)
    assert not listed, "\n" + "\n".join(listed)


def test_the_layer_map() -> None:
    assert layer_of("fedpilot") == "drivers" and layer_of("fedpilot.__main__") == "drivers"
    assert layer_of("fedpilot.strategies.base") == "strategies" and layer_of("fedpilot.runtime.measure") == "runtime"
    assert layer_of("fedpilot.families.classification") == "families" and layer_of("fedpilot.core.paths") == "core"
    assert layer_of("fedpilot.configs") == "config" and layer_of("fedpilot.config") == "config"
    assert layer_of("fedpilot.newthing") is None and layer_of("fedpilot.coreish") is None


@pytest.mark.parametrize(
    ("edge", "verdict"),
    [
        (Edge("fedpilot.data.split", "fedpilot.config", 3, ("DataSettings",)), "upward"),
        (Edge("fedpilot.runtime.client", "fedpilot.memory.measure", 3, ("PeakMeter",)), "upward"),
        (Edge("fedpilot.config", "fedpilot.strategies", 3, ("STRATEGIES",)), None),
        (Edge("fedpilot.flower.server_app", "fedpilot.simulation", 3, ("make_server",)), "driver imports another driver"),
        (Edge("fedpilot.cli", "fedpilot.simulation", 3, ("run_simulation",)), None),
        (Edge("fedpilot.cli", "fedpilot.comparison", 3, None), None),
        (Edge("fedpilot.cli", "fedpilot.simulation", 3, ("_report",)), "helpers"),
        (Edge("fedpilot.cli.plan", "fedpilot.simulation", 3, ("build_federation",)), "helpers"),
        (Edge("fedpilot.cli", "fedpilot.flower.server_app", 3, ("run_flower",)), "driver imports another driver"),
        (Edge("fedpilot.cli", "fedpilot.simulation", 3, None), "instead of its entry point"),
        (Edge("fedpilot.comparison", "fedpilot.simulation", 3, ("run_simulation",)), None),
        (Edge("fedpilot.comparison", "fedpilot.simulation", 3, ("build_federation",)), "helpers"),
        (Edge("fedpilot.comparison.runs", "fedpilot.comparison.tables", 3, ("x",)), None),  # within one driver
        (Edge("fedpilot.flower.codec", "fedpilot.federation", 3, ("make_model",)), None),
    ],
)
def test_the_rules_catch_what_they_should(edge: Edge, verdict: str | None) -> None:
    found = problems([edge])
    assert (found == []) if verdict is None else (len(found) == 1 and verdict in found[0]), found


def test_type_checking_imports_and_function_imports() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fedpilot.simulation import Federation\n"
        "def f():\n    from fedpilot.config import Config\n"
    )
    assert [n.module for n in _imports(tree)] == ["typing", "fedpilot.config"]
