"""The exact allocator against brute force and an independent exact method, and `fedpilot solve`."""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys

import pytest

from fedpilot.planning.allocation import Item, Problem, random_problem, solve


def brute_force(problem: Problem) -> float:
    best = -math.inf
    for size in range(1, len(problem.modules) + 1):
        for subset in itertools.combinations(problem.modules, size):
            if problem.cost([m.name for m in subset]) <= problem.budget_bytes:
                best = max(best, sum(m.value for m in subset))
    return best


def pareto_optimum(problem: Problem) -> float:
    """Independent exact method: per lowest layer, Pareto frontiers of (bytes, value) with and without a layer-l module."""

    def prune(points: dict[int, float]) -> dict[int, float]:
        kept, best = {}, -math.inf
        for weight in sorted(points):
            if points[weight] > best:
                kept[weight], best = points[weight], points[weight]
        return kept

    def add(points: dict[int, float], item: Item, capacity: int) -> dict[int, float]:
        return {w + item.bytes: v + item.value for w, v in points.items() if w + item.bytes <= capacity}

    def merge(*frontiers: dict[int, float]) -> dict[int, float]:
        merged: dict[int, float] = {}
        for frontier in frontiers:
            for w, v in frontier.items():
                merged[w] = max(v, merged.get(w, -math.inf))
        return prune(merged)

    best = -math.inf
    for layer in sorted({m.layer for m in problem.modules}):
        capacity = problem.budget_bytes - problem.cost_model.fixed - problem.cost_model.activation[layer]
        without, having = {0: 0.0}, {}
        for item in (m for m in problem.modules if m.layer >= layer):
            if item.layer == layer:
                having = merge(having, add(having, item, capacity), add(without, item, capacity))
            else:
                without, having = merge(without, add(without, item, capacity)), merge(having, add(having, item, capacity))
        if having:
            best = max(best, max(having.values()))
    return best


def small_problem(seed: int) -> Problem:
    rng = random.Random(seed)
    layers = rng.randint(1, 5)
    activation = sorted((rng.randint(0, 400) for _ in range(layers)), reverse=rng.random() < 0.8)
    modules = [Item(f"m{i}", rng.randrange(layers), rng.randint(0, 120), rng.choice([0.0, 1.0, rng.uniform(0, 5)])) for i in range(rng.randint(1, 11))]
    return Problem.from_items(rng.randint(50, 900), rng.randint(0, 100), activation, modules)


@pytest.mark.parametrize("seed", range(300))
def test_matches_brute_force_on_small_instances(seed: int) -> None:
    problem = small_problem(seed)
    expected = brute_force(problem)
    allocation = solve(problem)
    if expected == -math.inf:
        assert allocation is None
        return
    assert allocation is not None
    assert allocation.predicted_bytes == problem.cost(allocation.modules) <= problem.budget_bytes
    assert allocation.value == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_matches_an_independent_exact_method_on_large_instances(seed: int) -> None:
    problem = random_problem(100 + 20 * seed, seed)
    allocation = solve(problem)
    assert allocation is not None and problem.cost(allocation.modules) <= problem.budget_bytes
    assert allocation.value == pytest.approx(pareto_optimum(problem), rel=1e-12)


def test_position_term_is_what_makes_it_hard() -> None:
    """One valuable module at the bottom costs the whole activation stack; two at the top fit."""
    problem = Problem.from_items(
        budget_bytes=1000, fixed_bytes=100, activation_bytes=[890, 100],
        items=[Item("0.a", 0, 10, 3.0), Item("1.a", 1, 10, 2.0), Item("1.b", 1, 10, 2.0)],
    )
    allocation = solve(problem)
    assert allocation is not None and allocation.modules == ["1.a", "1.b"] and allocation.value == 4.0


def run_solve(payload: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedpilot.cli", "solve"], input=payload, capture_output=True, text=True)


def test_solve_cli_reads_stdin_and_prints_json() -> None:
    problem = random_problem(40, seed=3)
    payload = {
        "budget_bytes": problem.budget_bytes,
        "fixed_bytes": problem.cost_model.fixed,
        "activation_bytes": list(problem.cost_model.activation),
        "modules": [{"name": m.name, "layer": m.layer, "bytes": m.bytes, "value": m.value} for m in problem.modules],
    }
    proc = run_solve(json.dumps(payload))
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert set(answer) == {"modules", "predicted_bytes", "value", "solve_ms"}
    assert answer["predicted_bytes"] == problem.cost(answer["modules"]) <= problem.budget_bytes
    assert answer["value"] == pytest.approx(pareto_optimum(problem), rel=1e-12)


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        ('{"budget_bytes": 10, "fixed_bytes": 5, "activation_bytes": [100], "modules": [{"name": "a", "layer": 0, "bytes": 1, "value": 1}]}',
         1, "nothing fits in 10 bytes (0.0 MiB): the cheapest trainable set, a, costs 106 bytes"),
        ("{not json", 2, "input is not valid JSON"),
        ('{"budget_bytes": 10}', 2, "input: fixed_bytes: Field required"),
        ('{"budget_bytes": "lots", "fixed_bytes": 0, "activation_bytes": [0], "modules": []}', 2, "input: budget_bytes: Input should be a valid integer"),
        ('{"budget_bytes": 10, "fixed_bytes": 0, "activation_bytes": [0], "modules": [{"name": "a", "layer": 3, "bytes": 1, "value": 1}]}',
         2, "modules[0].layer is 3 but activation_bytes has 1 layers"),
        ('{"budget_bytes": 10, "fixed_bytes": 0, "activation_bytes": [0], "modules": [{"name": "a", "layer": 0, "bytes": 1, "value": -1}]}',
         2, "input: modules.0.value: Input should be greater than or equal to 0"),
        ('{"budget_bytes": 10, "fixed_bytes": 0, "activation_bytes": [0], "modules": [{"name": "a", "layer": 0, "bytes": 1, "value": 1}, {"name": "a", "layer": 0, "bytes": 2, "value": 1}]}',
         2, "module name 'a' appears twice"),
    ],
)
def test_solve_cli_errors_are_one_line(payload: str, code: int, message: str) -> None:
    proc = run_solve(payload)
    assert proc.returncode == code
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and proc.stdout == ""
