"""The joint (module, rank) allocator against brute force, against the module-set allocator where ranks
do not choose, the rank share, and `fedpilot solve` with ranks."""

from __future__ import annotations

import itertools
import json
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedpilot.planning.joint as joint_module
from fedpilot.cli import solve as solve_cli
from fedpilot.planning.allocation import Item, Problem, random_problem, solve
from fedpilot.planning.costmodel import CostModel
from fedpilot.planning.joint import JointProblem, RankedModule, RankOption, rank_problem, random_joint_problem, solve_joint
from fedpilot.planning.scoring import rank_share, rank_values

FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def brute_force(problem: JointProblem) -> float:
    best = -math.inf
    choices = [[0] + [o.rank for o in m.options] for m in problem.modules]
    for combo in itertools.product(*choices):
        ranks = {m.name: r for m, r in zip(problem.modules, combo) if r > 0}
        if ranks and problem.cost(ranks) <= problem.budget_bytes:
            best = max(best, math.fsum(_option(problem, m, r).value for m, r in ranks.items()))
    return best


def _option(problem: JointProblem, name: str, rank: int) -> RankOption:
    return next(o for m in problem.modules if m.name == name for o in m.options if o.rank == rank)


@st.composite
def joint_problems(draw: st.DrawFn, max_modules: int = 5) -> JointProblem:
    """Small problems: up to 4 layers, activation usually falling with depth, a few rank options per module
    drawn from a few (bytes, value) kinds so that ties and duplicates are common."""
    layers = draw(st.integers(1, 4))
    activation = draw(st.lists(st.integers(0, 300), min_size=layers, max_size=layers))
    if draw(st.booleans()):
        activation.sort(reverse=True)
    value = st.sampled_from([0.0, 0.5, 1.0, 2.0]) | st.floats(0, 5)
    kinds = draw(st.lists(st.tuples(st.integers(0, 80), value), min_size=1, max_size=4))
    modules = []
    for i in range(draw(st.integers(1, max_modules))):
        ranks = draw(st.lists(st.sampled_from([1, 2, 4, 8, 16]), min_size=1, max_size=3, unique=True))
        options = tuple(RankOption(r, *draw(st.sampled_from(kinds))) for r in sorted(ranks))
        modules.append(RankedModule(f"m{i}", draw(st.integers(0, layers - 1)), options))
    return JointProblem(draw(st.integers(0, 700)), draw(st.integers(0, 60)), tuple(activation), tuple(modules))


def check_exact(problem: JointProblem, answer: object, expected: float) -> None:
    if expected == -math.inf:
        assert answer is None
        return
    assert answer is not None and answer.optimal and answer.ranks
    assert answer.predicted_bytes == problem.cost(answer.ranks) <= problem.budget_bytes
    assert answer.value == pytest.approx(math.fsum(_option(problem, m, r).value for m, r in answer.ranks.items()), rel=1e-12, abs=1e-12)
    assert answer.value == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(FUZZ, max_examples=200)  # the exactness check: ~6 s, most of it the brute force
@given(joint_problems())
def test_matches_brute_force_on_small_instances(problem: JointProblem) -> None:
    expected = brute_force(problem)
    check_exact(problem, solve_joint(problem, delegate=False), expected)
    check_exact(problem, solve_joint(problem), expected)


def as_single_rank(problem: Problem, rank: int = 8) -> JointProblem:
    cm = problem.cost_model
    return JointProblem(problem.budget_bytes, cm.fixed, tuple(cm.activation),
                        tuple(RankedModule(m.name, m.layer, (RankOption(rank, m.bytes, m.value),)) for m in problem.modules))


@pytest.mark.parametrize("seed", range(8))
def test_one_rank_per_module_is_the_module_set_allocation(seed: int) -> None:
    """Options {0, r}: the joint solver's own search finds the module-set optimum, and solve_joint gives
    exactly the module-set allocator's set (ties included)."""
    problem = random_problem(40 + 20 * seed, seed)
    expected = solve(problem)
    joint = as_single_rank(problem)
    own = solve_joint(joint, delegate=False)
    assert own is not None and own.value == pytest.approx(expected.value, rel=1e-12)
    assert own.predicted_bytes == problem.cost(own.modules) <= problem.budget_bytes
    handed = solve_joint(joint)
    assert handed.modules == expected.modules and handed.ranks == {m: 8 for m in expected.modules}
    assert handed.value == expected.value and handed.predicted_bytes == expected.predicted_bytes


def ranked_cost_model(layers: int = 4) -> CostModel:
    modules = [f"{l}.{t}" for l in range(layers) for t in ("query", "value", "ffn_out")]
    return CostModel(
        fixed=1000, activation=tuple(100 * (layers - l) for l in range(layers)),
        module={m: (90 if m.endswith("ffn_out") else 40) for m in modules}, rank=8,
        rank_bytes={m: (10 if m.endswith("ffn_out") else 4) for m in modules},
    )


@pytest.mark.parametrize("budget", [1150, 1250, 1400, 1600, 2000])
def test_options_zero_and_the_global_rank_plan_as_today(budget: int) -> None:
    cm = ranked_cost_model()
    scores = {m: 1.0 + (i * 7919 % 13) / 13 for i, m in enumerate(cm.module)}
    today = solve(Problem(budget, cm, scores))
    answer = solve_joint(rank_problem(budget, cm, rank_values(scores, [0, 8], 8)))
    assert today is not None and answer is not None
    assert answer.modules == today.modules and set(answer.ranks.values()) == {8}
    assert answer.value == today.value and answer.predicted_bytes == today.predicted_bytes


def test_a_lower_rank_buys_depth() -> None:
    """Two modules fit at rank 8 in the top layer; at rank 2, the same budget also trains the layer below."""
    cm = CostModel(fixed=0, activation=(100, 50), module={"0.q": 40, "1.q": 40, "1.v": 40}, rank=8, rank_bytes={m: 4 for m in ("0.q", "1.q", "1.v")})
    scores = {"0.q": 1.0, "1.q": 1.0, "1.v": 1.0}
    budget = 180  # rank 8 everywhere: 100 + 120; top layer at rank 8: 50 + 80
    assert solve(Problem(budget, cm, scores)).modules == ["1.q", "1.v"]
    answer = solve_joint(rank_problem(budget, cm, rank_values(scores, [0, 2, 4, 8], 8)))
    # brute force over 4^3 selections
    assert answer.value == pytest.approx(brute_force(rank_problem(budget, cm, rank_values(scores, [0, 2, 4, 8], 8))), rel=1e-12)
    assert set(answer.modules) == {"0.q", "1.q", "1.v"} and cm.cost(answer.modules, answer.ranks) == answer.predicted_bytes <= budget
    assert min(answer.ranks.values()) < 8


def test_rank_share_is_concave_saturating_and_one_at_the_full_rank() -> None:
    shares = [rank_share(r, 16) for r in range(17)]
    assert shares[0] == 0.0 and shares[16] == 1.0
    gains = [b - a for a, b in zip(shares, shares[1:])]
    assert all(g > 0 for g in gains) and all(a > b for a, b in zip(gains, gains[1:]))
    assert rank_share(1, 8) == pytest.approx(1 / math.fsum(1 / i for i in range(1, 9)), rel=1e-15)
    with pytest.raises(ValueError):
        rank_share(9, 8)


@pytest.mark.parametrize("seed", range(2))
def test_200_modules_at_5_ranks_solve_in_under_a_second(seed: int) -> None:
    """CPU time (this process), not the wall clock; benchmarks/solve.py measures 200 instances."""
    problem = random_joint_problem(200, seed, (1, 2, 4, 8, 16))
    start = time.process_time()
    answer = solve_joint(problem)
    assert time.process_time() - start < 1.0
    assert answer is not None and answer.optimal and answer.predicted_bytes == problem.cost(answer.ranks) <= problem.budget_bytes


def test_time_limit_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(joint_module, "_clock", lambda: float(next(ticks)))
    problem = random_joint_problem(60, 3)
    exact = solve_joint(problem, time_limit_s=1e9)
    assert exact.optimal
    early = solve_joint(problem, time_limit_s=0.5)  # past the limit at its first look: the best single option
    assert early.optimal is False and len(early.ranks) == 1 and early.predicted_bytes == problem.cost(early.ranks) <= problem.budget_bytes
    assert early.value <= exact.value


# -- `fedpilot solve` with ranks -------------------------------------------------------------------
def old_payload(problem: Problem) -> dict:
    cm = problem.cost_model
    return {"budget_bytes": problem.budget_bytes, "fixed_bytes": cm.fixed, "activation_bytes": list(cm.activation),
            "modules": [{"name": m.name, "layer": m.layer, "bytes": m.bytes, "value": m.value} for m in problem.modules]}


@pytest.mark.parametrize("seed", range(3))
def test_old_inputs_answer_as_before(seed: int) -> None:
    """No rank keys: the module-set answer, the same keys (no "ranks"), the same set and value."""
    problem = random_problem(30, seed)
    code, out, err = solve_cli.respond(json.dumps(old_payload(problem)))
    assert code == 0 and err == ""
    answer = json.loads(out)
    expected = solve(problem)
    assert list(answer) == ["modules", "predicted_bytes", "value", "solve_ms", "optimal"]
    assert answer["modules"] == expected.modules and answer["value"] == expected.value and answer["predicted_bytes"] == expected.predicted_bytes
    # the same text with the solve time masked, byte for byte
    mask = {**answer, "solve_ms": 0}
    assert json.dumps(mask) == json.dumps({"modules": expected.modules, "predicted_bytes": expected.predicted_bytes,
                                           "value": expected.value, "solve_ms": 0, "optimal": True})


def test_rank_options_derive_costs_and_values() -> None:
    payload = {"budget_bytes": 1000, "fixed_bytes": 100, "activation_bytes": [500, 100], "rank_options": [0, 2, 4, 8],
               "modules": [{"name": n, "layer": l, "bytes": 80, "rank_bytes": 8, "value": v} for n, l, v in (("0.q", 0, 3.0), ("1.q", 1, 2.0), ("1.v", 1, 2.0))]}
    code, out, err = solve_cli.respond(json.dumps(payload))
    assert code == 0 and err == ""
    answer = json.loads(out)
    problem = solve_cli.parse_any(json.dumps(payload))
    assert [o.bytes for o in problem.modules[0].options] == [80 - 6 * 8, 80 - 4 * 8, 80]
    assert [o.value for o in problem.modules[0].options] == [3.0 * rank_share(r, 8) for r in (2, 4, 8)]
    assert answer["ranks"] == {"0.q": 8, "1.q": 8, "1.v": 8} and answer["predicted_bytes"] == 840
    assert answer["value"] == pytest.approx(brute_force(problem), rel=1e-12)


def test_explicit_rank_options_per_module() -> None:
    payload = {"budget_bytes": 300, "fixed_bytes": 0, "activation_bytes": [100, 50], "modules": [
        {"name": "0.q", "layer": 0, "ranks": [{"rank": 2, "bytes": 10, "value": 1}, {"rank": 8, "bytes": 40, "value": 1.5}]},
        {"name": "1.q", "layer": 1, "ranks": [{"rank": 4, "bytes": 150, "value": 2}]},
    ]}
    code, out, _ = solve_cli.respond(json.dumps(payload))
    answer = json.loads(out)
    assert code == 0 and answer["ranks"] == {"0.q": 8, "1.q": 4} and answer["predicted_bytes"] == 290 and answer["value"] == 3.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rank_options": []}, "rank_options: Input should be a non-empty JSON array"),
        ({"rank_options": [0]}, "rank_options: give at least one rank >= 1"),
        ({"rank_options": [2, "4"]}, "rank_options.1: Input should be a valid integer"),
        ({"full_rank": 8}, "full_rank says which rank"),
        ({"rank_options": [2, 8], "full_rank": 4}, "full_rank is 4, below the largest rank option 8"),
        ({"rank_options": [2, 8], "drop": "rank_bytes"}, "modules.0.rank_bytes: Field required"),
        ({"rank_options": [1, 8], "rank_bytes": 20}, "at rank 1 its bytes come to -40"),
        ({"ranks": [{"rank": 0, "bytes": 1, "value": 1}]}, "Input should be a rank >= 1"),
        ({"ranks": [{"rank": 2, "bytes": 1, "value": 1}, {"rank": 2, "bytes": 3, "value": 1}]}, "a rank appears twice"),
        ({"ranks": [{"rank": 2, "bytes": 1}]}, "modules.0.ranks.0.value: Field required"),
        ({"ranks": [{"rank": 2, "bytes": 1, "value": 1, "x": 1}]}, "unknown key 'x'"),
        ({"rank_bytes": 3}, "give its ranks, or rank_options at the top level"),
    ],
)
def test_rank_input_errors_are_one_line(change: dict, message: str) -> None:
    module = {"name": "a", "layer": 0, "bytes": 100, "value": 1.0}
    data = {"budget_bytes": 1000, "fixed_bytes": 0, "activation_bytes": [0]}
    for key in ("rank_options", "full_rank"):
        if key in change:
            data[key] = change[key]
    if "rank_options" in change and "drop" not in change and "rank_bytes" not in change:
        module["rank_bytes"] = 1
    if "rank_bytes" in change:
        module["rank_bytes"] = change["rank_bytes"]
    if "ranks" in change:
        module = {"name": "a", "layer": 0, "ranks": change["ranks"]}
    data["modules"] = [module]
    code, out, err = solve_cli.respond(json.dumps(data))
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_nothing_fits_names_the_cheapest_module_and_rank() -> None:
    payload = {"budget_bytes": 50, "fixed_bytes": 0, "activation_bytes": [40],
               "modules": [{"name": "a", "layer": 0, "ranks": [{"rank": 2, "bytes": 20, "value": 1}, {"rank": 8, "bytes": 80, "value": 2}]}]}
    code, out, err = solve_cli.respond(json.dumps(payload))
    assert code == 1 and out == "" and "the cheapest trainable set, a at rank 2, costs 60 bytes" in err


@pytest.mark.parametrize("seed", range(20))
def test_cli_joint_answers_match_the_solver(seed: int) -> None:
    rng = random.Random(seed)
    problem = random_joint_problem(rng.randint(3, 30), seed, (1, 4, 8))
    payload = {"budget_bytes": problem.budget_bytes, "fixed_bytes": problem.fixed_bytes, "activation_bytes": list(problem.activation_bytes),
               "modules": [{"name": m.name, "layer": m.layer, "ranks": [{"rank": o.rank, "bytes": o.bytes, "value": o.value} for o in m.options]}
                           for m in problem.modules]}
    code, out, err = solve_cli.respond(json.dumps(payload))
    expected = solve_joint(problem)
    if expected is None:
        assert code == 1 and "nothing fits" in err
        return
    answer = json.loads(out)
    assert code == 0 and answer["ranks"] == expected.ranks and answer["value"] == expected.value
    assert answer["modules"] == list(expected.ranks) and answer["predicted_bytes"] == problem.cost(answer["ranks"])


def test_item_names_stay_module_names() -> None:
    """The module-set items the joint solver hands over keep their names (no rank suffix)."""
    problem = Problem.from_items(100, 0, [10], [Item("a", 0, 30, 1.0), Item("b", 0, 30, 2.0)])
    assert solve_joint(as_single_rank(problem, 4)).ranks == {"a": 4, "b": 4}
