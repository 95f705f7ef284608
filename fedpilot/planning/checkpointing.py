"""Activation checkpointing as a planned option: the allocation with and without it, the better one.

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
