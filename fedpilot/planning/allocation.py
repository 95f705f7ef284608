"""Exact allocation of LoRA modules under a position-dependent memory budget.

    maximise   sum of value[m] for m in S
    subject to fixed + activation[lowest layer of S] + sum of bytes[m] for m in S <= budget,  S non-empty

The cost is not additive, so a plain knapsack is wrong. For each candidate lowest layer l we solve
a knapsack over the modules at layers >= l with capacity ``budget - fixed - activation[l]`` and the
side constraint that S holds a module of layer l. Where no layer above l holding modules has a
larger activation term than l (the usual shape: activations shrink with depth), the side constraint
is dropped: a set without a layer-l module is then still within budget at its own lowest layer.

Each layer's knapsack is solved exactly, without recursion:

- **exact arithmetic**: byte sizes are integers; values (finite floats >= 0) are turned into exact
  integers (a common power-of-two denominator, divided by their gcd), so sums, comparisons and
  bounds are exact and every bound can be rounded down to an integer;
- **grouping**: modules with the same bytes and value that are alike for this layer (both at layer
  l or both above it; any layer when the side constraint is dropped) form one item with a count;
  modules of zero bytes are always taken;
- **dominance**: with ties broken in a fixed order, some optimum takes a module only together with
  every module that is no larger, worth at least as much and no less able to meet the side
  constraint; so a group keeps only the copies that fit next to all their dominators;
- **expanding core** (Pisinger's minimal algorithm, on groups): from the greedy solution by value
  density, a core of groups around the split group grows one group at a time, alternately the next
  one that could be added and the next one that could be removed. Its states are the
  Pareto-optimal (bytes, value, holds a layer-l module) outcomes of the choices inside the core; a
  state is dropped once its bound (the rest filled, or freed, at the density of the next group
  outside the core, rounded down) cannot beat the best set found. Identical copies add one state
  per count, not one per subset; where many modules are nearly alike (a few sizes, similar
  values: a real model's modules) the states stay few where depth-first branch and bound tried
  exponentially many sets.

The best set found so far is shared across layers (starting from the best single module), and the
layers are searched in decreasing order of their root (Dantzig) bound, so most are skipped at their
root. An optional time limit stops the search early, at its next look at the clock: the answer is
then the best set found, which fits the budget but may not be optimal (``Allocation.optimal`` is
False). Subset-sum-like instances (value proportional to bytes, no exact fill) stay exponential:
that is what the limit is for.
"""

from __future__ import annotations

import math
import operator
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from fedpilot.planning.costmodel import CostModel

#: the solver's clock (seconds); a test may replace it
_clock = time.perf_counter

#: how many states the search makes between two looks at the clock
_CLOCK_EVERY = 1024


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
    def from_items(
        cls, budget_bytes: int, fixed_bytes: int, activation_bytes: Sequence[int], items: Sequence[Item],
        activation_checkpointed: Sequence[int] | None = None, module_checkpointed: Mapping[str, int] | None = None,
    ) -> Problem:
        """The problem of ``items``; with the two checkpointed terms (both or neither) its cost model prices checkpointing."""
        cost_model = CostModel(
            fixed=fixed_bytes,
            activation=tuple(activation_bytes),
            module={m.name: m.bytes for m in items},
            layer={m.name: m.layer for m in items},
            source="input",
            activation_checkpointed=None if activation_checkpointed is None else tuple(activation_checkpointed),
            module_checkpointed=None if module_checkpointed is None else dict(module_checkpointed),
        )
        return cls(budget_bytes, cost_model, {m.name: m.value for m in items})

    @property
    def modules(self) -> list[Item]:
        """The modules as knapsack items, in the cost model's order."""
        cm = self.cost_model
        return [Item(m, cm.depth(m), cm.module[m], self.values[m]) for m in cm.module]  # layer: the depth index

    def cost(self, names: Sequence[str]) -> int:
        return self.cost_model.cost(names)


@dataclass(frozen=True)
class Allocation:
    modules: list[str]
    predicted_bytes: int
    value: float
    solve_ms: float
    optimal: bool = True  # False: a time limit stopped the search; the set fits but may not be the best
    checkpointing: bool = False  # the set is priced (and must run) with activation checkpointing (planning.checkpointing)
    micro_batch: int = 0  # the set is priced (and must run) in micro-batches of this many rows (planning.checkpointing; 0: whole batch)


def solve(problem: Problem, time_limit_s: float | None = None) -> Allocation | None:
    """The optimal non-empty set of modules, or None when no single module fits the budget.

    With ``time_limit_s``, the search stops once it has run that long and returns the best set found
    so far with ``optimal=False`` (at worst the most valuable single module that fits).
    """
    start = _clock()
    deadline = None if time_limit_s is None else start + time_limit_s
    items = problem.modules
    if not items:
        return None
    cm = problem.cost_model
    if cm.floor > problem.budget_bytes:  # the forward pass alone does not fit (CostModel.floor)
        return None
    sizes = [_bytes(m) for m in items]
    scaled, scale_num, scale_den = _exact_values(items)
    budget = problem.budget_bytes
    budget = math.floor(budget) if isinstance(budget, float) and math.isfinite(budget) else _whole(budget, "the budget")
    spare = budget - _whole(cm.fixed, "the fixed cost")  # the capacity at layer l is spare - activation[l]
    activation = [_whole(a, f"activation[{layer}]") for layer, a in enumerate(cm.depth_activation())]

    # The incumbent to beat: the most valuable single module that fits (none fits: nothing does,
    # since a set costs at least as much as its lowest module alone).
    best_value, best_set = -1, None
    for idx, m in enumerate(items):
        if sizes[idx] + activation[m.layer] <= spare and scaled[idx] > best_value:
            best_value, best_set = scaled[idx], [idx]
    if best_set is None:
        return None

    # Modules by value density (exactly: floor(value * 2^shift / bytes) orders the fractions
    # strictly, as two different ones differ by at least 1 / (b1 * b2)), then by class and layer,
    # so that modules of the same bytes and value sit together, lowest layer first.
    shift = 2 * max(sizes).bit_length() + 1
    order = sorted(
        ((sizes[i], scaled[i], items[i].layer, i) for i in range(len(items)) if sizes[i] > 0),
        key=lambda t: (-((t[1] << shift) // t[0]), t[0], t[2], t[3]),
    )
    zero_sized = [(scaled[i], items[i].layer, i) for i in range(len(items)) if sizes[i] == 0]

    layers = sorted({m.layer for m in items})
    highest_above = list(accumulate((activation[l] for l in reversed(layers)), max, initial=-1))[::-1]
    smallest_at: dict[int, int] = {}
    for idx, m in enumerate(items):
        smallest_at[m.layer] = min(sizes[idx], smallest_at.get(m.layer, sizes[idx]))

    searches = []
    optimal = True
    for position, layer in enumerate(layers):
        if deadline is not None and _clock() > deadline:
            optimal = False
            searches = []
            break
        capacity = spare - activation[layer]
        if capacity < smallest_at[layer]:
            continue  # no module of this layer fits
        root = sum(t[0] for t in zero_sized if t[1] >= layer) + _root_bound(order, layer, capacity)
        relaxed = activation[layer] >= highest_above[position + 1]
        searches.append((root, layer, capacity, relaxed))

    searches.sort(key=lambda s: (-s[0], s[1]))
    for root, layer, capacity, relaxed in searches:
        if root <= best_value:
            break  # sorted: no later layer can beat the incumbent either
        if deadline is not None and _clock() > deadline:
            optimal = False
            break
        candidates = [t for t in order if t[2] >= layer and t[0] <= capacity]
        zeros = [t for t in zero_sized if t[1] >= layer]
        search = _LayerSearch(candidates, zeros, layer, capacity, relaxed)
        value, chosen, finished = search.run(best_value, deadline)
        if chosen is not None:
            best_value, best_set = value, chosen
        if not finished:
            optimal = False
            break

    names = [items[i].name for i in sorted(best_set)]
    value = _to_float(best_value * scale_num, scale_den)
    elapsed = (_clock() - start) * 1000
    return Allocation(names, problem.cost(names), value, elapsed, optimal)


def _whole(number: object, what: str) -> int:
    """A byte count as an exact int (numpy integers and integral floats accepted)."""
    try:
        return operator.index(number)
    except TypeError:
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ValueError(f"{what} is {number!r}; byte counts must be integers") from None


def _bytes(item: Item) -> int:
    size = _whole(item.bytes, f"module {item.name!r}'s size")
    if size < 0:
        raise ValueError(f"module {item.name!r} has {size} bytes; byte sizes must be >= 0")
    return size


def _exact_values(items: Sequence[Item]) -> tuple[list[int], int, int]:
    """Values as integers v_i with value_i = v_i * num / den exactly (den a power of two, gcd(v) = 1)."""
    ratios = []
    for m in items:
        try:
            value = float(m.value)
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"module {m.name!r} has value {m.value!r}; values must be finite and >= 0")
        ratios.append(value.as_integer_ratio())
    exponent = max(den.bit_length() - 1 for _, den in ratios)
    scaled = [num << (exponent - den.bit_length() + 1) for num, den in ratios]
    common = math.gcd(*scaled) or 1
    return [v // common for v in scaled], common, 1 << exponent


def _to_float(num: int, den: int) -> float:
    try:
        return num / den  # correctly rounded
    except OverflowError:
        return math.inf


def _root_bound(order: Sequence[tuple[int, int, int, int]], layer: int, capacity: int) -> int:
    """The fractional-knapsack (Dantzig) value of the modules at layers >= ``layer`` that fit
    ``capacity`` on their own, rounded down: an upper bound on any set with this lowest layer."""
    value, room = 0, capacity
    for size, item_value, at, _ in order:
        if at < layer or size > capacity:
            continue
        if size > room:
            return value + item_value * room // size
        room -= size
        value += item_value
    return value


class _LayerSearch:
    """The knapsack of one candidate lowest layer: grouped, dominance-reduced items, an expanding core."""

    def __init__(self, candidates: list[tuple[int, int, int, int]], zeros: list[tuple[int, int, int]],
                 layer: int, capacity: int, relaxed: bool) -> None:
        self.capacity = capacity
        # zero-byte modules cost nothing: always taken
        self.base_value = sum(t[0] for t in zeros)
        self.base_set = [t[2] for t in zeros]
        self.base_required = relaxed or any(t[1] == layer for t in zeros)
        # groups: consecutive candidates of the same bytes, value and role (required: at layer l)
        sizes: list[int] = []
        values: list[int] = []
        required: list[bool] = []
        members: list[list[tuple[int, int]]] = []
        for size, value, at, idx in candidates:
            role = relaxed or at == layer
            if sizes and sizes[-1] == size and values[-1] == value and required[-1] == role:
                members[-1].append((at, idx))
            else:
                sizes.append(size)
                values.append(value)
                required.append(role)
                members.append([(at, idx)])
        counts = _dominance_caps(sizes, values, [len(g) for g in members], required, capacity, relaxed)
        keep = [i for i, n in enumerate(counts) if n > 0]
        self.sizes = [sizes[i] for i in keep]
        self.values = [values[i] for i in keep]
        self.counts = [counts[i] for i in keep]
        self.required = [required[i] for i in keep]
        # which copies a count takes: the highest layers first (the cost is lowest or equal)
        self.members = [[idx for _, idx in sorted(members[i], key=lambda t: (-t[0], t[1]))] for i in keep]

    def run(self, incumbent: int, deadline: float | None) -> tuple[int, list[int] | None, bool]:
        """(best value, its module indices or None if nothing beat ``incumbent``, whether the search finished).

        An expanding core (Pisinger's minimal algorithm, on groups): start from the greedy solution
        (whole groups by density while they fit, then as many copies of the split group as fit) and
        widen a core around the split group one group at a time, to the right (copies that may be
        added) and to the left (copies that may be removed). The states are the Pareto-optimal
        (bytes, value, holds a required module) outcomes of the decisions inside the core; everything
        left of it is taken, everything right of it is not. A state is dropped once its bound (the
        rest filled, or freed, at the density of the next group outside the core) cannot beat the
        best set found; the search ends when no state is left or the core spans every group.
        """
        sizes, values, counts, required = self.sizes, self.values, self.counts, self.required
        g, capacity = len(sizes), self.capacity
        best_value, best_trace = incumbent, None
        if not g:  # only modules of zero bytes
            if self.base_required and self.base_value > best_value:
                return self.base_value, list(self.base_set), True
            return incumbent, None, True
        # the greedy (break) solution
        room, split, taken_at_split = capacity, g, 0
        for i in range(g):
            whole = counts[i] * sizes[i]
            if whole > room:
                split, taken_at_split = i, room // sizes[i]
                break
            room -= whole
        left = [(i, counts[i]) for i in range(split)] + ([(split, taken_at_split)] if taken_at_split else [])
        right = ([(split, counts[split] - taken_at_split)] if split < g else []) + [(i, counts[i]) for i in range(split + 1, g)]
        # left_required[a]: a required group among left[:a] (taken in every state while outside the core)
        left_required = list(accumulate((required[i] for i, _ in left), operator.or_, initial=False))
        # right_required[b]: a required group among right[b:] (one a state could still add)
        right_required = list(accumulate((required[i] for i, _ in reversed(right)), operator.or_, initial=False))[::-1]
        a, b = len(left), 0  # the core holds left[a:] and right[:b]
        weight = sum(sizes[i] * n for i, n in left)
        value = self.base_value + sum(values[i] * n for i, n in left)
        # a state: (bytes, -value, holds no required module from the core, bound, trace of its decisions)
        states = [(weight, -value, True, 0, None)]
        by_bytes_then_value = operator.itemgetter(0, 1, 2)
        group, copies, sign = 0, 0, 1  # the group just added to the core: none yet
        work, finished, to_the_right = 0, True, True
        while True:
            # every state with 0..copies of the new group added (right) or removed (left), bounded
            # with the densities of the next groups outside the core
            outside_required = self.base_required or left_required[a]
            can_add_required = right_required[b]
            add_size = sizes[right[b][0]] if b < len(right) else 0
            add_value = values[right[b][0]] if b < len(right) else 0
            free_size = sizes[left[a - 1][0]] if a else 0
            free_value = values[left[a - 1][0]] if a else 0
            size, worth, is_required = sign * sizes[group], sign * values[group], required[group]
            candidates = []
            for weight, negative, was_missing, _, trace in states:
                for k in range(copies + 1):
                    # right: k copies added; left: k copies removed (copies - k kept)
                    if k:
                        weight += size
                        negative -= worth
                        step = (group, sign * k, trace)
                    else:
                        step = trace
                    missing = was_missing and not (is_required and (k > 0 if sign > 0 else k < copies))
                    if missing and not (outside_required or can_add_required):
                        continue  # the side constraint can no longer be met
                    if weight <= capacity:
                        if -negative > best_value and (outside_required or not missing):
                            best_value, best_trace = -negative, step
                        bound = -negative + (capacity - weight) * add_value // add_size if add_size else -negative
                    elif free_size:
                        bound = -negative + (capacity - weight) * free_value // free_size
                    else:
                        continue  # over the capacity with nothing left to free
                    if bound > best_value:
                        candidates.append((weight, negative, missing, bound, step))
                work += copies + 1
                if deadline is not None and work > _CLOCK_EVERY:
                    work = 0
                    if _clock() > deadline:
                        finished = False
                        break
            if not finished:
                break  # the time is up: the best set is recorded, the rest would not be searched
            candidates.sort(key=by_bytes_then_value)
            # keep the Pareto-optimal states that can still beat the best set: no other is as light,
            # as valuable and as able to meet the side constraint
            states, best_any, best_with = [], None, None
            for n, state in enumerate(candidates):
                if deadline is not None and n % (16 * _CLOCK_EVERY) == 16 * _CLOCK_EVERY - 1 and _clock() > deadline:
                    finished = False
                    break
                negative, missing = state[1], state[2]
                if state[3] <= best_value:
                    continue
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
            if not finished or not states or (a == 0 and b == len(right)):
                break
            if deadline is not None and _clock() > deadline:
                finished = False
                break
            # widen the core by one group, alternating sides while both have groups left
            if (to_the_right and b < len(right)) or a == 0:
                (group, copies), sign = right[b], 1
                b += 1
            else:
                a -= 1
                (group, copies), sign = left[a], -1
            to_the_right = not to_the_right
        if best_trace is None and best_value == incumbent:
            return incumbent, None, finished
        take = [counts[i] if i < split else 0 for i in range(g)]
        if split < g:
            take[split] = taken_at_split
        trace = best_trace
        while trace is not None:
            group, delta, trace = trace
            take[group] += delta
        chosen = list(self.base_set)
        for group, k in zip(self.members, take):
            chosen.extend(group[:k])
        return best_value, chosen, finished


def _dominance_caps(sizes: list[int], values: list[int], counts: list[int], required: list[bool],
                    capacity: int, relaxed: bool) -> list[int]:
    """How many copies of each group some optimum may take, by dominance.

    Order the modules by (bytes, -value, required first, then copy). Module j dominates a later
    module i when value_j >= value_i and (j is required or i is not). Swapping a dominated module
    in a set for a missing dominator keeps the set feasible, its value and the side constraint, and
    lowers the sum of positions in the order, so some optimum holds every dominator of each of its
    modules: copy c of a group fits only if c * bytes + the dominators' bytes <= capacity.
    """
    g = len(sizes)
    ranks = {v: r for r, v in enumerate(sorted(set(values), reverse=True), start=1)}  # 1 = most valuable
    width = len(ranks)
    all_tree = [0] * (width + 1)  # Fenwick trees of bytes by value rank: every module / required ones
    required_tree = all_tree if relaxed else [0] * (width + 1)
    caps = [0] * g
    for t in sorted(range(g), key=lambda t: (sizes[t], -values[t], not required[t])):
        rank = ranks[values[t]]
        tree = required_tree if required[t] else all_tree
        dominators, r = 0, rank
        while r:
            dominators += tree[r]
            r &= r - 1
        room = capacity - dominators
        caps[t] = min(counts[t], room // sizes[t]) if room >= sizes[t] else 0
        weight = counts[t] * sizes[t]
        trees = (all_tree,) if relaxed or not required[t] else (all_tree, required_tree)
        for tree in trees:
            r = rank
            while r <= width:
                tree[r] += weight
                r += r & -r
    return caps


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
