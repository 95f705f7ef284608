"""Nested allocations (fedpilot.planning.nesting, ``strategy_options.nesting``): against brute force on
small random instances, on a hand-made federation, and in one FAST round."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpilot.config import Config, FederationSettings
from fedpilot.planning.allocation import Allocation, Problem
from fedpilot.planning.costmodel import CostModel
from fedpilot.planning.nesting import nested_allocations, nesting_order, restrict
from fedpilot.simulation import run_simulation
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext


def best_within(problem: Problem, allowed: list[str]) -> float | None:
    """Brute force: the most valuable non-empty subset of ``allowed`` within the budget (None: none fits)."""
    best = None
    for size in range(1, len(allowed) + 1):
        for subset in itertools.combinations(allowed, size):
            if problem.cost(subset) <= problem.budget_bytes:
                value = math.fsum(problem.values[m] for m in subset)
                best = value if best is None else max(best, value)
    return best


@st.composite
def federations(draw: st.DrawFn) -> dict[int, Problem]:
    """2-6 clients over one random position-aware cost model (activation per layer, any shape), with
    budgets from the cheapest single module up to past full LoRA; values shared (as under
    local_scope: federation) or each client's own, >= 0 with ties and zeros."""
    layers = draw(st.integers(1, 3))
    activation = tuple(draw(st.lists(st.integers(0, 60), min_size=layers, max_size=layers)))
    count = draw(st.integers(1, 6))
    names = [f"m{i}" for i in range(count)]
    cost_model = CostModel(
        fixed=draw(st.integers(0, 20)),
        activation=activation,
        module={m: draw(st.integers(0, 30)) for m in names},
        layer={m: draw(st.integers(0, layers - 1)) for m in names},
        source="input",
    )
    value = st.sampled_from([0.0, 1.0, 2.0]) | st.floats(0, 10)
    shared = {m: draw(value) for m in names}
    own = draw(st.booleans())
    cheapest = cost_model.cheapest()[1]
    budgets = draw(st.lists(st.integers(cheapest, cost_model.full() + 10), min_size=2, max_size=6))
    return {
        cid: Problem(budget, cost_model, {m: draw(value) for m in names} if own else shared)
        for cid, budget in zip(draw(st.permutations(range(len(budgets)))), budgets)
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(federations())
def test_nested_sets_are_nested_exact_and_within_budget(problems: dict[int, Problem]) -> None:
    placed = nested_allocations(problems)
    order = nesting_order(problems)
    assert sorted(placed) == sorted(problems) and order == sorted(problems, key=lambda c: (-problems[c].budget_bytes, c))
    modules = list(problems[order[0]].cost_model.module)
    for position, cid in enumerate(order):
        problem, nested = problems[cid], placed[cid]
        chosen = nested.allocation.modules
        # (c) within the usable budget, and the recorded value is the set's
        assert chosen and problem.cost(chosen) <= problem.budget_bytes
        assert nested.allocation.value == pytest.approx(math.fsum(problem.values[m] for m in chosen), rel=1e-12, abs=1e-12)
        # (b) the exact optimum of its restricted problem (brute force over subsets of the allowed modules)
        before = order[position - 1] if position else None
        allowed = modules if before is None else placed[before].allocation.modules
        best = best_within(problem, allowed)
        if before is not None and problem == problems[before]:
            assert chosen == placed[before].allocation.modules and nested.within == before and not nested.fallback
        elif best is None:  # nothing allowed fits: the unrestricted optimum, recorded as a fallback
            assert before is not None and nested.fallback and nested.within is None
            assert nested.allocation.value == pytest.approx(best_within(problem, modules), rel=1e-12, abs=1e-12)
        else:
            assert not nested.fallback and nested.within == before
            assert set(chosen) <= set(allowed)
            assert nested.allocation.value == pytest.approx(best, rel=1e-12, abs=1e-12)
    # (a) nesting for every pair, up to the first fallback between them
    for i, j in itertools.combinations(range(len(order)), 2):
        if not any(placed[order[k]].fallback for k in range(i + 1, j + 1)):
            assert set(placed[order[j]].allocation.modules) <= set(placed[order[i]].allocation.modules)


def hand_made(rich: int, poor: int, values: dict[str, float]) -> dict[int, Problem]:
    """Two q modules (10 bytes) and two f modules (40), no position term, fixed 100."""
    cost_model = CostModel(fixed=100, activation=(0, 0), module={"0.q": 10, "0.f": 40, "1.q": 10, "1.f": 40})
    return {0: Problem(100 + poor, cost_model, values), 1: Problem(100 + rich, cost_model, values)}


def test_a_poorer_client_is_restricted_to_the_richer_set() -> None:
    values = {"0.q": 4.0, "1.q": 3.0, "0.f": 1.0, "1.f": 9.0}
    placed = nested_allocations(hand_made(rich=50, poor=20, values=values))
    assert sorted(placed[1].allocation.modules) == ["0.q", "1.f"] and placed[1].within is None
    assert placed[0].allocation.modules == ["0.q"] and placed[0].within == 1  # {0.q, 1.q} alone: not within 1's set


def test_a_restriction_nothing_fits_falls_back_to_the_clients_own_optimum() -> None:
    values = {"0.q": 4.0, "1.q": 3.0, "0.f": 1.0, "1.f": 9.0}
    placed = nested_allocations(hand_made(rich=40, poor=20, values=values))
    assert placed[1].allocation.modules == ["1.f"]
    assert sorted(placed[0].allocation.modules) == ["0.q", "1.q"] and placed[0].fallback and placed[0].within is None


def test_restrict_prices_the_allowed_sets_as_before() -> None:
    problem = hand_made(50, 20, {"0.q": 1.0, "1.q": 1.0, "0.f": 1.0, "1.f": 1.0})[0]
    sub = restrict(problem, ["1.f", "0.q", "unknown"])
    assert list(sub.cost_model.module) == ["0.q", "1.f"] and sub.budget_bytes == problem.budget_bytes
    assert sub.cost(["0.q", "1.f"]) == problem.cost(["0.q", "1.f"]) and sub.cost(["1.f"]) == problem.cost(["1.f"])


def test_keep_must_stay_within_the_allowed_set() -> None:
    problems = hand_made(50, 20, {"0.q": 4.0, "1.q": 3.0, "0.f": 1.0, "1.f": 9.0})
    stray = lambda cid, allocation, problem: Allocation(["1.q"], 0, 0.0, 0.0) if cid == 0 else allocation  # noqa: E731
    with pytest.raises(ValueError, match="outside its allowed set"):
        nested_allocations(problems, stray)


def test_a_client_that_fits_nothing_is_an_error() -> None:
    problems = hand_made(50, 5, {"0.q": 1.0, "1.q": 1.0, "0.f": 1.0, "1.f": 1.0})
    with pytest.raises(ValueError, match="client 0"):
        nested_allocations(problems)


# -- the strategy option -------------------------------------------------------------------------------


def small_fedpilot(**options):
    modules = [f"{l}.{t}" for l in range(2) for t in ("q", "f")]
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in modules} | {"head": ["head/w"]}
    shapes = {k: (2, 3) for ks in keys.values() for k in ks}
    cost_model = CostModel(fixed=100, activation=(0, 0), module={m: (40 if m.endswith("f") else 10) for m in modules})
    context = FederationContext(modules, keys, shapes, 2, 2, cost_model)
    name = options.pop("name", "fedpilot")
    return STRATEGIES[name](context, STRATEGIES[name].Options(ig_weight=1.0, **options))


def plan(strategy, clients, scores) -> dict[int, tuple[str, ...]]:
    strategy.local_scores[0] = scores
    return {cid: tuple(sorted(a.modules)) for cid, a in strategy.configure_train(1, clients, {}).items()}


# usable budgets (margin 0): client 0 room 20, client 1 room 50, client 2 room 40, client 3 no budget
CLIENTS = [ClientInfo(0, 10, 100 + 20), ClientInfo(1, 10, 100 + 50), ClientInfo(2, 10, 100 + 40), ClientInfo(3, 10, None)]
SCORES = [{"0.q": 4.0, "1.q": 3.0, "0.f": 1.0, "1.f": 9.0}, {"0.q": 1.0, "1.q": 5.0, "0.f": 6.0, "1.f": 2.0}, {m: 1.0 for m in ("0.q", "1.q", "0.f", "1.f")}]


@pytest.mark.parametrize("name", ["fedpilot", "fedpilot-noig", "fedpilot-nostagg", "fedpilot-additive"])
def test_nesting_off_plans_as_before(name: str) -> None:
    for keep in (None, 0.1):
        absent, off = small_fedpilot(name=name, keep_margin=keep), small_fedpilot(name=name, keep_margin=keep, nesting="off")
        assert absent.options == off.options
        for scores in SCORES:
            assert plan(absent, CLIENTS, scores) == plan(off, CLIENTS, scores)
            untimed = lambda s: {cid: replace(a, solve_ms=0.0) for cid, a in s.allocations.items()}  # noqa: E731
            assert untimed(absent) == untimed(off) and absent.trained == off.trained and off.nesting == {}


def test_nesting_round_nests_the_round_by_budget() -> None:
    off, nested = small_fedpilot(), small_fedpilot(nesting="round")
    assert plan(off, CLIENTS, SCORES[0]) == {0: ("0.q", "1.q"), 1: ("0.q", "1.f"), 2: ("1.f",), 3: ("0.f", "0.q", "1.f", "1.q")}
    got = plan(nested, CLIENTS, SCORES[0])
    assert got[3] == tuple(sorted(off.trained[3])) and got[1] == ("0.q", "1.f") and got[2] == ("1.f",)  # the richer ones: their optimum
    assert got[0] == ("0.q", "1.q") and nested.nesting[0].fallback  # no module of {1.f} fits room 20
    assert nested.nesting[2].within == 1 and 3 not in nested.nesting
    got = plan(nested, CLIENTS[:2], SCORES[0])
    assert got == {0: ("0.q",), 1: ("0.q", "1.f")} and nested.nesting[0].within == 1


def test_keep_margin_keeps_a_set_only_within_the_nesting() -> None:
    strategy = small_fedpilot(nesting="round", keep_margin=10.0)
    first = plan(strategy, CLIENTS[:2], SCORES[0])
    assert first == {0: ("0.q",), 1: ("0.q", "1.f")}
    assert plan(strategy, CLIENTS[:2], SCORES[1]) == first  # a large margin: both keep, and 0's set lies within 1's
    fresh = small_fedpilot(nesting="round", keep_margin=10.0)
    fresh.trained = {0: ("1.q",), 1: ("0.q", "1.f")}  # 0's last set is not within 1's kept one: re-solved within it
    assert plan(fresh, CLIENTS[:2], SCORES[0]) == first


def test_a_bare_yaml_off_is_off() -> None:
    import yaml

    options = yaml.safe_load("nesting: off")
    assert options == {"nesting": False} and STRATEGIES["fedpilot"].Options(**options).nesting == "off"
    with pytest.raises(ValueError):
        STRATEGIES["fedpilot"].Options(nesting=True)


def test_fedpilot_rank_refuses_nesting() -> None:
    with pytest.raises(ValueError, match="nesting"):
        STRATEGIES["fedpilot-rank"].Options(nesting="round")


def test_a_fast_round_with_nesting_trains_nested_sets_within_budget(fast_config: Config, fast_cost_model: CostModel, tmp_path) -> None:
    """Budgets where values decide (every client affords the top layer and part of the next ones)."""
    margin = FederationSettings().memory_margin
    t = 1 + max(int(m.split(".")[0]) for m in fast_cost_model.module) - 1
    sets = ([f"{t}.query", f"{t}.value", f"{t - 1}.query"], [f"{t}.query", f"{t}.value", f"{t - 1}.query", f"{t - 1}.value", f"{t - 2}.query"],
            [m for m in fast_cost_model.module if int(m.split(".")[0]) >= 1])
    budgets = tuple(math.ceil(fast_cost_model.cost(s) / (1 - margin)) + 1 for s in sets)
    config = fast_config.model_copy(update={
        "federation": fast_config.federation.model_copy(update={"budgets": budgets, "rounds": 1}),
        "train": fast_config.train.model_copy(update={"local_steps": 1}),
        "strategy_options": {"nesting": "round", "score_batches": 1},
    })
    results = run_simulation(config, tmp_path / "run", progress=False).results
    assert results["budget_violations"] == []
    clients = sorted(results["rounds"][1]["clients"], key=lambda c: (-c["budget_bytes"], c["cid"]))
    assert [c["cid"] for c in clients] == [2, 1, 0]
    for richer, poorer in itertools.pairwise(clients):
        assert set(poorer["modules"]) <= set(richer["modules"])
        assert poorer["predicted_bytes"] <= poorer["budget_bytes"]
    assert len(clients[0]["modules"]) > len(clients[1]["modules"]) > len(clients[2]["modules"])
