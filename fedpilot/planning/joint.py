"""Exact joint allocation of LoRA modules and their ranks under the position-dependent memory budget.

Each module m has rank options r in R_m (rank 0, "not trained", is always an option), each with a
cost b(m, r) and a value v(m, r):

    maximise   sum over m of v(m, r_m)
    subject to fixed + activation[lowest layer with r_m > 0] + sum over m of b(m, r_m) <= budget,
               some r_m > 0

a multiple-choice knapsack (one option per module) with the position term of
:mod:`fedpilot.planning.allocation`. Costs come from :meth:`CostModel.module_cost` (the module's
saved inputs plus rank-proportional parameters, gradients and optimiser state); values from
:func:`fedpilot.planning.scoring.rank_values` (the module's score times a concave, saturating share
of its rank: see there why).

As in :mod:`fedpilot.planning.allocation`, each candidate lowest layer l is one problem over the
modules at layers >= l with capacity ``budget - fixed - activation[l]`` and the side constraint that
a module of layer l trains (dropped where no higher layer holding modules stores more activation
than l). Each is solved exactly, in integers (values turned into exact integers, a common
power-of-two denominator), by dynamic programming over Pareto states with an LP bound:

- **options**: per module, the options that fit, with every option dropped that another of the
  module beats (no more bytes, at least the value, no less able to meet the side constraint);
- **the LP**: lambda = p / q is the critical slope of the LP relaxation (the increments of every
  module's upper convex hull of (bytes, value) from rank 0, filled by density); each module's LP
  vertex takes its increments denser than lambda;
- **states**: the modules are decided one at a time, those whose best option under lambda (reduced
  value q v - p b) beats their second best by the widest margin first, so that deviating from them
  is pruned at once. A state fixes the options of the modules decided so far; completed by the LP
  vertices of the others it is a whole selection, the best found when it fits (the LP's rounding is
  the first). A state is kept while it is Pareto-optimal in (bytes, value, meets the side
  constraint) and its bound beats the best found;
- **the bound** (the LP around its vertex): the undecided modules' LP is concave in
  the capacity left to them, so beyond the bytes of their vertices it grows at most at the density
  of the next increment any of them could add, and below at least at the density of the last
  increment any of them took; O(1) per state, exact integers, rounded down.

The best selection is shared across layers, which are searched in decreasing order of their root
bound, so most are skipped at their root. Where every module has a single non-zero option the
problem is the module-set knapsack, and :func:`solve_joint` hands it to
:func:`fedpilot.planning.allocation.solve` (the same answer as the module-only allocator, ties
included). An optional time limit stops the search early at its next look at the clock: the answer
is then the best selection found (``optimal`` False).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from fedpilot.planning import allocation as module_allocation
from fedpilot.planning.allocation import Item, Problem, _exact_values, _to_float, _whole
from fedpilot.planning.costmodel import CostModel

#: the solver's clock (seconds); a test may replace it
_clock = time.perf_counter

#: how many states the search makes between two looks at the clock
_CLOCK_EVERY = 4096


@dataclass(frozen=True)
class RankOption:
    rank: int  # >= 1
    bytes: int  # what training the module at this rank adds to a step
    value: float


@dataclass(frozen=True)
class RankedModule:
    name: str
    layer: int
    options: tuple[RankOption, ...]  # the non-zero ranks; rank 0 (not trained, 0 bytes, value 0) is implicit


@dataclass(frozen=True)
class JointProblem:
    budget_bytes: int
    fixed_bytes: int
    activation_bytes: tuple[int, ...]
    modules: tuple[RankedModule, ...]
    floor_bytes: int = 0  # CostModel.floor: no step costs less

    def cost(self, ranks: Mapping[str, int]) -> int:
        """Predicted peak bytes of a step that trains each module of ``ranks`` at its rank (rank 0: not trained)."""
        by_name = {m.name: m for m in self.modules}
        trained = {m: r for m, r in ranks.items() if r > 0}
        if not trained:
            return max(self.floor_bytes, self.fixed_bytes)
        lowest = min(by_name[m].layer for m in trained)
        return max(self.floor_bytes, self.fixed_bytes + self.activation_bytes[lowest] + sum(_option(by_name[m], r).bytes for m, r in trained.items()))

    def value(self, ranks: Mapping[str, int]) -> float:
        by_name = {m.name: m for m in self.modules}
        return sum(_option(by_name[m], r).value for m, r in ranks.items() if r > 0)


def _option(module: RankedModule, rank: int) -> RankOption:
    for option in module.options:
        if option.rank == rank:
            return option
    raise ValueError(f"module {module.name!r} has no rank option {rank}")


@dataclass(frozen=True)
class JointAllocation:
    ranks: dict[str, int]  # the trained modules (rank >= 1), in the problem's order
    predicted_bytes: int
    value: float
    solve_ms: float
    optimal: bool = True

    @property
    def modules(self) -> list[str]:
        return list(self.ranks)


def rank_problem(budget_bytes: int, cost_model: CostModel, values: Mapping[str, Mapping[int, float]], base_rank: int | None = None) -> JointProblem:
    """The joint problem of ``cost_model``'s modules, priced at each rank by :meth:`CostModel.module_cost`,
    with ``values[m][r]`` the value of module m at rank r (ranks >= 1; a module absent is not offered).
    ``base_rank``: the rank the cost model's ``module`` terms are at, where it does not say itself."""
    base = cost_model.rank if cost_model.rank is not None else base_rank
    modules = []
    for m in cost_model.module:
        if m not in values:
            continue
        options = tuple(RankOption(r, cost_model.module_cost(m, None if r == base else r), float(v))
                        for r, v in sorted(values[m].items()) if r > 0)
        if options:
            modules.append(RankedModule(m, cost_model.depth(m), options))  # its depth index: layer and stage
    return JointProblem(budget_bytes, cost_model.fixed, cost_model.depth_activation(), tuple(modules), cost_model.floor)


def solve_joint(problem: JointProblem, time_limit_s: float | None = None, delegate: bool = True) -> JointAllocation | None:
    """The optimal selection of ranks (some module trained), or None when no module fits at any rank.

    ``delegate``: a problem with one non-zero option per module goes to the module-set allocator
    (False: always this solver; for tests).
    """
    start = _clock()
    modules = [m for m in problem.modules if m.options]
    if not modules or problem.floor_bytes > problem.budget_bytes:
        return None
    for m in modules:
        ranks = [o.rank for o in m.options]
        if len(set(ranks)) != len(ranks) or min(ranks) < 1:
            raise ValueError(f"module {m.name!r}: rank options must be distinct and >= 1, got {ranks}")
    if delegate and all(len(m.options) == 1 for m in modules):
        single = Problem.from_items(
            problem.budget_bytes, problem.fixed_bytes, problem.activation_bytes,
            [Item(m.name, m.layer, m.options[0].bytes, m.options[0].value) for m in modules],
        )
        answer = module_allocation.solve(single, time_limit_s)
        if answer is None:
            return None
        rank_of = {m.name: m.options[0].rank for m in modules}
        return JointAllocation({m: rank_of[m] for m in answer.modules}, answer.predicted_bytes, answer.value,
                               (_clock() - start) * 1000, answer.optimal)
    deadline = None if time_limit_s is None else start + time_limit_s
    flat = [Item(f"{m.name}@{o.rank}", m.layer, o.bytes, o.value) for m in modules for o in m.options]
    scaled, scale_num, scale_den = _exact_values(flat)
    options: list[list[tuple[int, int, int]]] = []  # per module: (bytes, value, rank)
    position = 0
    for m in modules:
        row = []
        for o in m.options:
            size = _whole(o.bytes, f"module {m.name!r}'s size at rank {o.rank}")
            if size < 0:
                raise ValueError(f"module {m.name!r} has {size} bytes at rank {o.rank}; byte sizes must be >= 0")
            row.append((size, scaled[position], o.rank))
            position += 1
        options.append(row)
    budget = problem.budget_bytes
    budget = math.floor(budget) if isinstance(budget, float) and math.isfinite(budget) else _whole(budget, "the budget")
    spare = budget - _whole(problem.fixed_bytes, "the fixed cost")
    activation = [_whole(a, f"activation[{layer}]") for layer, a in enumerate(problem.activation_bytes)]
    layer_of = [m.layer for m in modules]

    # the incumbent: the most valuable single (module, rank) that fits
    best_value, best_choice = -1, None
    for i, row in enumerate(options):
        for size, value, rank in row:
            if size + activation[layer_of[i]] <= spare and value > best_value:
                best_value, best_choice = value, {i: rank}
    if best_choice is None:
        return None

    layers = sorted(set(layer_of))
    highest_above = [max((activation[h] for h in layers if h > l), default=-1) for l in layers]
    searches = []
    for at, layer in enumerate(layers):
        capacity = spare - activation[layer]
        relaxed = activation[layer] >= highest_above[at]
        search = _LayerSearch(options, layer_of, layer, capacity, relaxed)
        if search.feasible:
            searches.append(search)
    searches.sort(key=lambda s: (-s.root_bound, s.layer))
    optimal = True
    for search in searches:
        if search.root_bound <= best_value:
            break  # sorted: no later layer can beat the best selection either
        if deadline is not None and _clock() > deadline:
            optimal = False
            break
        value, choice, finished = search.run(best_value, deadline)
        if choice is not None:
            best_value, best_choice = value, choice
        if not finished:
            optimal = False
            break
    ranks = {modules[i].name: best_choice[i] for i in sorted(best_choice)}
    return JointAllocation(ranks, problem.cost(ranks), _to_float(best_value * scale_num, scale_den), (_clock() - start) * 1000, optimal)


class _LayerSearch:
    """The multiple-choice knapsack of one candidate lowest layer (see the module docstring)."""

    def __init__(self, options: Sequence[Sequence[tuple[int, int, int]]], layer_of: Sequence[int], layer: int, capacity: int,
                 relaxed: bool) -> None:
        self.layer, self.capacity = layer, capacity
        classes: list[tuple[int, list[tuple[int, int, int, bool]]]] = []  # (module index, [(bytes, value, rank, meets)])
        for i, row in enumerate(options):
            if layer_of[i] < layer:
                continue
            meets = relaxed or layer_of[i] == layer
            kept = _undominated([(size, value, rank, meets) for size, value, rank in row if size <= capacity])
            if kept:
                classes.append((i, kept))
        self.feasible = capacity >= 0 and any(o[3] for _, kept in classes for o in kept)
        self.root_bound = -1
        if not self.feasible:
            return
        hulls = [_hull([(o[0], o[1]) for o in kept]) for _, kept in classes]
        p, q = _critical_slope(hulls, capacity)
        # per class: the LP's vertex at lambda = p / q (every hull increment denser than lambda taken), its
        # bytes and value, the density of the increment after it (None: the last) and of the one before it
        # (None: nothing to free), and the margin by which its reduced value q v - p b beats the next best option
        scored = []
        for (i, kept), hull in zip(classes, hulls):
            at = 0
            while at + 1 < len(hull) and _denser((hull[at + 1][1] - hull[at][1], hull[at + 1][0] - hull[at][0]), (p, q)):
                at += 1
            after = (hull[at + 1][1] - hull[at][1], hull[at + 1][0] - hull[at][0]) if at + 1 < len(hull) else None
            before = (hull[at][1] - hull[at - 1][1], hull[at][0] - hull[at - 1][0]) if at else None
            reduced = sorted([0] + [q * v - p * b for b, v, _, _ in kept], reverse=True)
            scored.append((reduced[0] - reduced[1], i, kept, hull[at], after, before))
        scored.sort(key=lambda t: (-t[0], t[1]))  # widest margin first: deviating from them is pruned at once
        self.order = [(i, kept) for _, i, kept, _, _, _ in scored]
        # the rank of each class's vertex (0: the origin) and whether it meets the side constraint
        self.vertex_rank = [next((o[2] for o in kept if (o[0], o[1]) == t[3]), 0) for t, (_, kept) in zip(scored, self.order)]
        n = len(scored)
        # the LP of the classes from position k on, around its vertex (bytes[k], value[k]): it grows at most at
        # density add[k] beyond it and shrinks at least at density free[k] below it (its concavity)
        self.bytes, self.value = [0] * (n + 1), [0] * (n + 1)
        self.add: list[tuple[int, int]] = [(0, 1)] * (n + 1)
        self.free: list[tuple[int, int]] = [(1, 0)] * (n + 1)  # (1, 0): infinitely dense, nothing to free
        self.meets_later = [False] * (n + 1)  # a class from position k on can meet the side constraint
        self.vertex_meets = [False] * (n + 1)  # a class from position k on meets it at its vertex
        for k in reversed(range(n)):
            _, _, kept, (vertex_bytes, vertex_value), after, before = scored[k]
            self.bytes[k], self.value[k] = self.bytes[k + 1] + vertex_bytes, self.value[k + 1] + vertex_value
            self.add[k] = after if after is not None and _denser(after, self.add[k + 1]) else self.add[k + 1]
            self.free[k] = before if before is not None and _denser(self.free[k + 1], before) else self.free[k + 1]
            self.meets_later[k] = self.meets_later[k + 1] or any(o[3] for o in kept)
            self.vertex_meets[k] = self.vertex_meets[k + 1] or (self.vertex_rank[k] > 0 and kept[0][3])
        self.root_bound = self.bound(0, 0, 0)

    def bound(self, k: int, weight: int, value: int) -> int:
        """An upper bound, rounded down, on the value of a state (``weight``, ``value``) completed by the classes from k on."""
        slack = self.capacity - weight - self.bytes[k]
        dv, db = self.add[k] if slack >= 0 else self.free[k]
        if db == 0:
            return -1  # over the capacity with nothing left to free
        return value + self.value[k] + (slack * dv) // db

    def run(self, incumbent: int, deadline: float | None) -> tuple[int, dict[int, int] | None, bool]:
        """(best value, its module -> rank or None if nothing beat ``incumbent``, whether the search finished).

        A state fixes the options of the classes taken so far; with the other classes at their vertices
        it is a whole selection, the best found when it fits and beats it (the LP's rounding first)."""
        capacity = self.capacity
        best_value, best_trace = incumbent, None
        if self.bytes[0] <= capacity and self.vertex_meets[0] and self.value[0] > best_value:
            best_value, best_trace = self.value[0], (None, 0)
        # a state: (bytes, -value, does not meet the side constraint, trace)
        states: list[tuple[int, int, bool, object]] = [(0, 0, True, None)]
        work = 0
        for k, (i, kept) in enumerate(self.order):
            rest_bytes, rest_value, can_meet = self.bytes[k + 1], self.value[k + 1], self.meets_later[k + 1]
            rest_meets = self.vertex_meets[k + 1]
            add_value, add_bytes = self.add[k + 1]
            free_value, free_bytes = self.free[k + 1]
            candidates = []
            for weight, negative, missing, trace in states:
                for size, value, rank, meets in ((0, 0, 0, False), *kept):  # rank 0 for this class, then each option
                    w = weight + size
                    if w > capacity:
                        continue
                    v = value - negative
                    miss = missing and not meets
                    if miss and not can_meet:
                        continue
                    # the bound (see :meth:`bound`), inlined
                    slack = capacity - w - rest_bytes
                    if slack >= 0:
                        if (v + rest_value - best_value) * add_bytes + slack * add_value <= 0:
                            continue
                    elif free_bytes == 0 or (v + rest_value - best_value) * free_bytes + slack * free_value <= 0:
                        continue
                    step = (i, rank, trace) if rank else trace
                    if not miss and v > best_value:
                        best_value, best_trace = v, (step, None)
                    if slack >= 0 and (rest_meets or not miss) and v + rest_value > best_value:
                        best_value, best_trace = v + rest_value, (step, k + 1)
                    candidates.append((w, -v, miss, step))
                work += len(kept) + 1
                if deadline is not None and work > _CLOCK_EVERY:
                    work = 0
                    if _clock() > deadline:
                        return best_value, self._choice(best_trace, best_value, incumbent), False
            candidates.sort(key=lambda s: (s[0], s[1], s[2]))
            # keep the Pareto-optimal states that can still beat the best found
            states, best_any, best_with = [], None, None
            for state in candidates:
                weight, negative, missing = state[0], state[1], state[2]
                if self.bound(k + 1, weight, -negative) <= best_value:
                    continue  # the best found moved on
                if missing:
                    if best_any is not None and negative >= best_any:
                        continue
                elif best_with is not None and negative >= best_with:
                    continue
                states.append(state)
                if best_any is None or negative < best_any:
                    best_any = negative
                if not missing and (best_with is None or negative < best_with):
                    best_with = negative
            if not states:
                break
        return best_value, self._choice(best_trace, best_value, incumbent), True

    def _choice(self, best: tuple[object, int | None] | None, value: int, incumbent: int) -> dict[int, int] | None:
        """module -> rank of the best selection: the options its trace fixed, the vertices of the classes after it."""
        if best is None or value == incumbent:
            return None
        trace, rest = best
        choice = {}
        if rest is not None:
            choice = {self.order[k][0]: self.vertex_rank[k] for k in range(rest, len(self.order)) if self.vertex_rank[k]}
        while trace is not None:
            i, rank, trace = trace  # type: ignore[misc]
            choice[i] = rank
        return choice


def _denser(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether density a = (value, bytes) exceeds b (bytes 0: infinitely dense)."""
    return a[0] * b[1] > b[0] * a[1]


def _undominated(options: list[tuple[int, int, int, bool]]) -> list[tuple[int, int, int, bool]]:
    """The options no other beats: another with no more bytes, at least the value and the side constraint
    met if this one meets it; rank 0 (0 bytes, value 0, meets nothing) counts as another."""
    kept: list[tuple[int, int, int, bool]] = []
    best_any, best_meeting = 0, None  # rank 0 is worth 0 at 0 bytes
    for option in sorted(options, key=lambda o: (o[0], -o[1], not o[3], o[2])):
        size, value, _, meets = option
        if meets:
            if best_meeting is not None and value <= best_meeting:
                continue
            best_meeting = value
        elif value <= best_any:
            continue
        kept.append(option)
        best_any = max(best_any, value)
    return kept


def _hull(points: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The upper convex hull of (bytes, value) points with (0, 0), from (0, 0) up to the most valuable point."""
    hull = [(0, 0)]
    for size, value in sorted(points):
        if value <= hull[-1][1]:
            continue
        if size == hull[-1][0]:
            hull[-1] = (size, value)
            continue
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (size - hull[-1][0]) <= (value - hull[-1][1]) * (hull[-1][0] - hull[-2][0]):
            hull.pop()
        hull.append((size, value))
    return hull


def _critical_slope(hulls: Sequence[Sequence[tuple[int, int]]], capacity: int) -> tuple[int, int]:
    """lambda = p / q: the density of the increment at which the LP relaxation of the multiple-choice
    knapsack (the hulls' increments filled by density) stops; (0, 1) when every increment fits."""
    increments = [(b1 - b0, v1 - v0) for hull in hulls for (b0, v0), (b1, v1) in zip(hull, hull[1:])]
    # zero-byte increments always fit; the others by density, exactly (values can be huge integers)
    paid = sorted(((db, dv) for db, dv in increments if db > 0), key=lambda t: Fraction(-t[1], t[0]))
    room = capacity
    for db, dv in paid:
        if db > room:
            g = math.gcd(dv, db) or 1
            return dv // g, db // g
        room -= db
    return 0, 1


def random_joint_problem(num_modules: int, seed: int, ranks: Sequence[int] = (2, 4, 8, 16), modules_per_layer: int = 8) -> JointProblem:
    """A synthetic instance shaped like a transformer's (:func:`~fedpilot.planning.allocation.random_problem`'s
    layers and budgets), each module offered at ``ranks``: bytes a rank-independent part (its saved
    inputs) plus a part proportional to the rank, value its score times :func:`rank_share`."""
    import random

    from fedpilot.planning.scoring import rank_share

    rng = random.Random(seed)
    mib = 1 << 20
    top = max(ranks)
    layers = max(1, math.ceil(num_modules / modules_per_layer))
    per_layer = rng.randint(10 * mib, 40 * mib)
    activation = tuple((layers - l) * per_layer + rng.randint(0, mib) for l in range(layers))
    modules = []
    for i in range(num_modules):
        inputs, per_rank, score = rng.randint(mib // 4, 4 * mib), rng.randint(mib // 64, mib // 2), rng.lognormvariate(0, 1)
        options = tuple(RankOption(r, inputs + r * per_rank, score * rank_share(r, top)) for r in ranks)
        modules.append(RankedModule(f"{i // modules_per_layer}.m{i % modules_per_layer}", i // modules_per_layer, options))
    full = activation[0] + sum(m.options[-1].bytes for m in modules)
    fixed = 100 * mib
    return JointProblem(fixed + int(rng.uniform(0.15, 0.9) * full), fixed, activation, tuple(modules))
