"""Nested allocations: across the clients of a round, a poorer client trains a subset of what a richer
one trains (as in LEGEND's layer sets or nested-rank designs), each set still the exact optimum of
what it is allowed.

The rule (:func:`nested_allocations`):

1. order the clients by decreasing usable budget (``Problem.budget_bytes``), ties by increasing id;
2. the first (richest) client solves its exact knapsack (:func:`fedpilot.planning.allocation.solve`)
   over every module;
3. each next client solves its exact knapsack restricted to the modules of the previous client in the
   order (the next richer one): :func:`restrict` keeps only those modules in its cost model, so every
   allowed set costs and is worth exactly what it does unrestricted, and the optimum found is the
   optimum over the subsets of the allowed set;
4. a client whose problem equals the previous client's (the same budget, cost model and values: one
   budget tier of a federation planned with shared values) gets the previous client's set itself;
5. fallback: where no allowed module fits a client's budget on its own (the richer set holds only
   modules too costly for it, e.g. a single expensive module worth more than any cheap one), its
   restricted problem has no non-empty solution; it then gets its unrestricted optimum, recorded as
   ``fallback`` (not nested in the previous set), and the next client is restricted to that set. No
   client is dropped.

So along the order each set is a subset of the one before, except across a fallback: whenever client
a's usable budget is below client b's, or equal with a's id larger, and no fallback lies between them
in the order, a's set is a subset of b's; equal problems get equal sets.

``keep``, where given, may replace each solved allocation (the stability rule: a client's previous
set while it is worth nearly as much) by another set of the same (restricted) problem; it must return
a set of that problem's modules within its budget (checked), so nesting holds for the kept sets too.
It is not called for a client that copies the previous client's set (step 4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from fedpilot.planning.allocation import Allocation, Problem, solve

#: the stability hook: (client id, the solved allocation, the problem it solved) -> the allocation to use
Keep = Callable[[int, Allocation, Problem], Allocation]


@dataclass(frozen=True)
class Nested:
    """One client's place in the nesting: its allocation and the client whose set bounded it.

    ``within``: the id of the (next richer) client whose set this one was restricted to or copied;
    None for the richest client and for a fallback. ``fallback``: no module of that set fitted, so
    this is the client's unrestricted optimum.
    """

    allocation: Allocation
    within: int | None
    fallback: bool = False


def restrict(problem: Problem, allowed: Collection[str]) -> Problem:
    """``problem`` over the modules in ``allowed`` only (names it does not know are ignored): the same
    budget, fixed and activation terms, and values, so every set of allowed modules costs and is
    worth exactly what it does in ``problem``."""
    cm = problem.cost_model
    allowed = set(allowed)
    keep = [m for m in cm.module if m in allowed]
    restricted = dataclasses.replace(
        cm,
        module={m: cm.module[m] for m in keep},
        layer={m: cm.layer[m] for m in keep},
        stage={m: cm.stage[m] for m in keep if m in cm.stage},
        rank_bytes={m: cm.rank_bytes[m] for m in keep if m in cm.rank_bytes},
        module_checkpointed=None if cm.module_checkpointed is None else {m: cm.module_checkpointed[m] for m in keep},
    )
    return Problem(problem.budget_bytes, restricted, problem.values)


def nesting_order(problems: Mapping[int, Problem]) -> list[int]:
    """Client ids by decreasing usable budget, ties by increasing id."""
    return sorted(problems, key=lambda cid: (-problems[cid].budget_bytes, cid))


def nested_allocations(problems: Mapping[int, Problem], keep: Keep | None = None, time_limit_s: float | None = None) -> dict[int, Nested]:
    """Every client's allocation under the nesting rule of this module's docstring, by client id.

    ``problems``: each client's problem (its usable budget, the cost model it is planned with, its
    module values). Raises ValueError for a client that fits no module at all (nothing to fall back to).
    """
    placed: dict[int, Nested] = {}
    before: int | None = None
    for cid in nesting_order(problems):
        problem = problems[cid]
        if before is not None and problem == problems[before]:
            placed[cid] = Nested(placed[before].allocation, before)
            before = cid
            continue
        planned, within, fallback = problem, None, False
        allocation = None
        if before is not None:
            planned = restrict(problem, placed[before].allocation.modules)
            allocation = solve(planned, time_limit_s)
            if allocation is None:
                planned, fallback = problem, True
            else:
                within = before
        if allocation is None:
            allocation = solve(problem, time_limit_s)
            if allocation is None:
                raise ValueError(f"client {cid}: no module fits its usable budget of {problem.budget_bytes} bytes")
        if keep is not None:
            allocation = _checked(cid, keep(cid, allocation, planned), planned)
        placed[cid] = Nested(allocation, within, fallback)
        before = cid
    return placed


def _checked(cid: int, allocation: Allocation, problem: Problem) -> Allocation:
    stray = set(allocation.modules) - set(problem.cost_model.module)
    if stray:
        raise ValueError(f"client {cid}: the kept set holds modules outside its allowed set: {sorted(stray)}")
    if not allocation.modules or problem.cost(allocation.modules) > problem.budget_bytes:
        raise ValueError(f"client {cid}: the kept set is empty or over its usable budget of {problem.budget_bytes} bytes")
    return allocation
