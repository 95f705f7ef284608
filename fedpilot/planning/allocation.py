"""Exact allocation of LoRA modules under a position-dependent memory budget.

    maximise   sum of value[m] for m in S
    subject to fixed + activation[lowest layer of S] + sum of bytes[m] for m in S <= budget,  S non-empty

The cost is not additive, so a plain knapsack is wrong. For each candidate lowest layer l we solve
a 0/1 knapsack over the modules at layers >= l with capacity ``budget - fixed - activation[l]``
and the side constraint that S holds a module of layer l, by depth-first branch and bound with
the fractional (Dantzig) upper bound. The best value found so far is shared across layers, so a
layer whose bound cannot beat it is skipped at its root. Values must be >= 0 (the bound assumes
it); byte sizes are integers and compared exactly.
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from fedpilot.planning.costmodel import CostModel


@dataclass(frozen=True)
class Item:
    name: str
    layer: int
    bytes: int
    value: float


@dataclass(frozen=True)
class Problem:
    """Maximise the value of a module set whose :meth:`CostModel.cost` stays within ``budget_bytes``."""

    budget_bytes: int
    cost_model: CostModel
    values: Mapping[str, float]

    @classmethod
    def from_items(cls, budget_bytes: int, fixed_bytes: int, activation_bytes: Sequence[int], items: Sequence[Item]) -> Problem:
        cost_model = CostModel(
            fixed=fixed_bytes,
            activation=tuple(activation_bytes),
            module={m.name: m.bytes for m in items},
            layer={m.name: m.layer for m in items},
            source="input",
        )
        return cls(budget_bytes, cost_model, {m.name: m.value for m in items})

    @property
    def modules(self) -> list[Item]:
        """The modules as knapsack items, in the cost model's order."""
        cm = self.cost_model
        return [Item(m, cm.layer[m], cm.module[m], self.values[m]) for m in cm.module]

    def cost(self, names: Sequence[str]) -> int:
        return self.cost_model.cost(names)


@dataclass(frozen=True)
class Allocation:
    modules: list[str]
    predicted_bytes: int
    value: float
    solve_ms: float


def solve(problem: Problem) -> Allocation | None:
    """The optimal non-empty set of modules, or None when no single module fits the budget."""
    start = time.perf_counter()
    best_value = -math.inf
    best_set: list[Item] = []
    items = problem.modules
    layers = sorted({m.layer for m in items})
    searches = []
    for layer in layers:
        capacity = problem.budget_bytes - problem.cost_model.fixed - problem.cost_model.activation[layer]
        candidates = [m for m in items if m.layer >= layer and m.bytes <= capacity]
        if any(m.layer == layer for m in candidates):
            searches.append(_LayerSearch(candidates, layer, capacity))
    # Most promising layers first, so the shared incumbent prunes the others at their root.
    for search in sorted(searches, key=lambda s: -s.root_bound):
        if search.root_bound <= best_value:
            continue
        value, chosen = search.run(best_value)
        if chosen is not None and value > best_value:
            best_value, best_set = value, chosen
    elapsed = (time.perf_counter() - start) * 1000
    if not best_set:
        return None
    chosen = {m.name for m in best_set}
    names = [m.name for m in items if m.name in chosen]
    return Allocation(names, problem.cost(names), float(sum(m.value for m in best_set)), elapsed)


class _LayerSearch:
    """Branch and bound for one candidate lowest layer: items by value density, best first."""

    def __init__(self, items: list[Item], layer: int, capacity: int) -> None:
        self.items = sorted(items, key=lambda m: (-(m.value / m.bytes) if m.bytes else -math.inf, m.name))
        self.capacity = capacity
        self.required = [m.layer == layer for m in self.items]
        # required_left[i]: how many required items sit at positions >= i
        self.required_left = list(accumulate(reversed(self.required), initial=0))[::-1]
        self.prefix_bytes = list(accumulate((m.bytes for m in self.items), initial=0))
        self.prefix_value = list(accumulate((m.value for m in self.items), initial=0.0))
        self.root_bound = self._bound(0, capacity)

    def _bound(self, start: int, capacity: int) -> float:
        """Fractional-knapsack value of items[start:] in ``capacity``: an upper bound on any completion."""
        limit = self.prefix_bytes[start] + capacity
        end = bisect_right(self.prefix_bytes, limit, lo=start) - 1  # items[start:end] fit whole
        bound = self.prefix_value[end] - self.prefix_value[start]
        if end < len(self.items):
            item = self.items[end]
            bound += item.value * (limit - self.prefix_bytes[end]) / item.bytes
        return bound

    def run(self, incumbent: float) -> tuple[float, list[Item] | None]:
        items, n = self.items, len(self.items)
        best_value = incumbent
        best: list[Item] | None = None
        chosen: list[Item] = []

        def visit(i: int, capacity: int, value: float, has_required: bool) -> None:
            nonlocal best_value, best
            if not has_required and self.required_left[i] == 0:
                return
            if i == n:
                if value > best_value:
                    best_value, best = value, list(chosen)
                return
            if value + self._bound(i, capacity) <= best_value:
                return
            item = items[i]
            if item.bytes <= capacity:
                chosen.append(item)
                visit(i + 1, capacity - item.bytes, value + item.value, has_required or self.required[i])
                chosen.pop()
            visit(i + 1, capacity, value, has_required)

        visit(0, self.capacity, 0.0, False)
        return best_value, best


def random_problem(num_modules: int, seed: int, modules_per_layer: int = 8) -> Problem:
    """A synthetic instance shaped like a transformer's: activation falls with depth, modules of a few MiB."""
    rng = random.Random(seed)
    mib = 1 << 20
    layers = max(1, math.ceil(num_modules / modules_per_layer))
    per_layer = rng.randint(10 * mib, 40 * mib)
    activation = [(layers - l) * per_layer + rng.randint(0, mib) for l in range(layers)]
    modules = [
        Item(f"{i // modules_per_layer}.m{i % modules_per_layer}", i // modules_per_layer, rng.randint(mib // 2, 12 * mib), rng.lognormvariate(0, 1))
        for i in range(num_modules)
    ]
    fixed = 100 * mib
    budget = fixed + int(rng.uniform(0.15, 0.9) * (activation[0] + sum(m.bytes for m in modules)))
    return Problem.from_items(budget, fixed, activation, modules)
