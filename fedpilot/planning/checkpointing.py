"""Memory for compute as planned options: activation checkpointing, and micro-batches with gradient accumulation.
For each, the allocation with and without it, the better one.

A checkpointed step recomputes the transformer blocks from its lowest trained layer up in backward,
so it stores less (:meth:`CostModel.checkpointed`) and runs slower. For one client the optimum over
(module set, checkpointing on or off) is the better of two exact solves: the plain one, and the one
under the checkpointed cost model. Checkpointing is chosen only when it buys strictly more value
(a tie keeps it off: the same value, a faster step).
"""

from __future__ import annotations

from dataclasses import replace

from fedpilot.planning.allocation import Allocation, Problem, solve


def solve_planned(problem: Problem, time_limit_s: float | None = None) -> Allocation | None:
    """The most valuable allocation over module sets x {checkpointing off, on}; None when nothing fits either way.

    The problem's cost model must price checkpointing (else a one-line FedpilotError). With
    ``time_limit_s`` each solve gets it in full; the result is optimal only when both were.
    """
    checkpointed_model = problem.cost_model.checkpointed()  # the error first, before any search
    plain = solve(problem, time_limit_s)
    checkpointed = solve(Problem(problem.budget_bytes, checkpointed_model, problem.values), time_limit_s)
    if checkpointed is None:
        return plain
    checkpointed = replace(checkpointed, checkpointing=True)
    if plain is None:
        return checkpointed
    optimal = plain.optimal and checkpointed.optimal
    solve_ms = plain.solve_ms + checkpointed.solve_ms
    best = checkpointed if checkpointed.value > plain.value else plain
    return replace(best, optimal=optimal, solve_ms=solve_ms)


def micro_batch_sizes(batch_rows: int, smallest: int = 1) -> list[int]:
    """The micro-batches a planner tries for a batch of ``batch_rows``: the batch, then its halvings down to
    ``smallest`` rows (``smallest`` itself last when no halving lands on it)."""
    if not 1 <= smallest <= batch_rows:
        raise ValueError(f"smallest micro-batch {smallest}: give 1 to the batch of {batch_rows}")
    sizes = [batch_rows]
    while sizes[-1] // 2 >= smallest:
        sizes.append(sizes[-1] // 2)
    if sizes[-1] != smallest:
        sizes.append(smallest)
    return sizes


def solve_micro_batched(problem: Problem, time_limit_s: float | None = None, smallest: int = 1) -> Allocation | None:
    """The most valuable allocation over module sets x micro-batch sizes (:func:`micro_batch_sizes` of the cost
    model's calibrated batch, down to ``smallest`` rows; :meth:`CostModel.at_batch` prices each); None when
    nothing fits at any size.

    A smaller micro-batch stores less and runs slower (the same optimiser step: the gradients of its micro-batches
    accumulate), so it is chosen only when it buys strictly more value: ties keep the larger (``micro_batch`` 0
    stands for the whole batch). The cost model must price micro-batches (else a one-line FedpilotError).
    """
    cost_model = problem.cost_model
    if not cost_model.prices_micro_batches:
        cost_model.at_batch(1)  # the error
    best: Allocation | None = None
    optimal, solve_ms = True, 0.0
    for rows in micro_batch_sizes(int(cost_model.batch_rows), smallest):  # type: ignore[arg-type]
        answer = solve(Problem(problem.budget_bytes, cost_model.at_batch(rows), problem.values), time_limit_s)
        if answer is None:
            continue
        optimal, solve_ms = optimal and answer.optimal, solve_ms + answer.solve_ms
        if best is None or answer.value > best.value:
            best = replace(answer, micro_batch=0 if rows == cost_model.batch_rows else rows)
    return None if best is None else replace(best, optimal=optimal, solve_ms=solve_ms)
