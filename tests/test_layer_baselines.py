"""The layer-wise baselines' defining rules, on synthetic cost models (pure numpy, fast):
straggler (one common set: the largest the smallest budget affords), FedRA (a new random whole-layer
allocation each round, within budgets, replayable), Fed-HeLLo's layer patterns (GD-HLA fixed,
RGD-HLA randomized) and the pure helpers of fedpilot.planning.layers."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from fedpilot.config import parse_config
from fedpilot.core.errors import ConfigError, FedpilotError
from fedpilot.core.keys import module_layer
from fedpilot.planning.costmodel import CostModel
from fedpilot.planning.layers import (
    BOTTLENECK_12,
    PROBABILITY_PATTERNS,
    fit_layers,
    layer_groups,
    most_modules,
    pattern_probabilities,
    plan_whole_layers,
    priority_order,
    weighted_order,
)
from fedpilot.strategies import STRATEGIES, ClientInfo, ClientUpdate, FederationContext
from fedpilot.strategies.aggregation_utils import sample_weighted_average

TARGETS = ("q", "v", "f")


def make_context(cost_model: CostModel, layers: int, targets=TARGETS, margin: float = 0.0, seed: int = 0) -> FederationContext:
    modules = [f"{l}.{t}" for l in range(layers) for t in targets]
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in modules} | {"head": ["head/w"]}
    shapes = {k: (2, 3) for ks in keys.values() for k in ks}
    return FederationContext(modules, keys, shapes, layers, 2, cost_model, memory_margin=margin, seed=seed)


def synthetic_context(seed: int, margin: float = 0.0, layers: int = 4) -> FederationContext:
    """Like tests/test_contracts.py's: random module costs, activation falling with depth."""
    rng = random.Random(seed)
    modules = [f"{l}.{t}" for l in range(layers) for t in TARGETS]
    cost_model = CostModel(
        fixed=1000, activation=tuple(sorted((rng.randint(0, 500) for _ in range(layers)), reverse=True)),
        module={m: rng.randint(1, 80) for m in modules},
    )
    return make_context(cost_model, layers, margin=margin, seed=seed)


def flat_context(layers: int, targets=("q", "v"), activation: tuple[int, ...] | None = None) -> FederationContext:
    """Every module costs 10 and (by default) no activation: a budget of fixed + 20 k fits exactly k layers."""
    modules = [f"{l}.{t}" for l in range(layers) for t in targets]
    cost_model = CostModel(fixed=100, activation=activation or (0,) * layers, module={m: 10 for m in modules})
    return make_context(cost_model, layers, targets)


def layers_budget(k: int, per_layer: int = 20) -> int:
    return 100 + k * per_layer


def trained_layers(modules) -> set[int]:
    return {module_layer(m) for m in modules}


def is_whole_layers(context: FederationContext, modules) -> bool:
    groups = layer_groups(context.modules)
    return set(modules) == {m for l in trained_layers(modules) for m in groups[l]}


def in_context_order(context: FederationContext, modules) -> bool:
    return list(modules) == [m for m in context.modules if m in set(modules)]


def random_budgets(context: FederationContext, rng: random.Random, n: int) -> list[int | None]:
    """Budgets from the cheapest module to beyond full LoRA (the margin included), a few unlimited."""
    low = math.ceil(context.cost_model.cheapest()[1] / (1 - context.memory_margin)) + 1
    high = math.ceil(context.cost_model.full() / (1 - context.memory_margin))
    return [None if rng.random() < 0.1 else rng.randint(low, high + 50) for _ in range(n)]


# -- straggler --------------------------------------------------------------------------------------

def brute_force_largest(context: FederationContext, room: int) -> int:
    modules = list(context.modules)
    for size in range(len(modules), 0, -1):
        if any(context.cost_model.cost(s) <= room for s in itertools.combinations(modules, size)):
            return size
    return 0


def test_straggler_gives_everyone_the_largest_set_the_smallest_budget_affords() -> None:
    for seed in range(25):
        context = synthetic_context(seed, margin=random.Random(seed).choice([0.0, 0.1]))
        rng = random.Random(seed)
        clients = [ClientInfo(cid, 10, b) for cid, b in enumerate(random_budgets(context, rng, 6))]
        strategy = STRATEGIES["straggler"](context)
        strategy.check_budgets(clients)
        finite = [context.usable(c.budget_bytes) for c in clients if c.budget_bytes is not None]
        room = min(finite) if finite else None
        sets = set()
        for server_round in range(1, 4):  # any sample of clients, any round: one set
            sample = rng.sample(clients, rng.randint(1, len(clients)))
            plan = strategy.configure_train(server_round, sample, {})
            assert set(plan) == {c.cid for c in sample}
            sets |= {a.modules for a in plan.values()}
        assert len(sets) == 1
        common = sets.pop()
        assert in_context_order(context, common)
        if room is None:
            assert common == tuple(context.modules)
        else:
            assert context.cost_model.cost(common) <= room
            assert len(common) == brute_force_largest(context, room)
            assert list(common) == most_modules(context.cost_model, context.modules, room)  # the allocator breaks ties


def test_straggler_refuses_when_the_smallest_budget_fits_nothing() -> None:
    context = synthetic_context(1)
    cheapest = context.cost_model.cheapest()[1]
    strategy = STRATEGIES["straggler"](context)
    clients = [ClientInfo(0, 10, None), ClientInfo(1, 10, cheapest - 1), ClientInfo(2, 10, cheapest * 3)]
    with pytest.raises(FedpilotError, match="client 1 has"):
        strategy.check_budgets(clients)
    with pytest.raises(FedpilotError, match="client 1 has"):
        strategy.configure_train(1, clients[2:], {})
    unchecked = STRATEGIES["straggler"](context)
    with pytest.raises(FedpilotError, match="check_budgets"):
        unchecked.configure_train(1, clients[2:], {})
    strategy.check_budgets([clients[2]])  # a client it never saw cannot be given the common set
    with pytest.raises(FedpilotError, match="never saw"):
        strategy.configure_train(1, [ClientInfo(3, 10, cheapest)], {})


# -- FedRA ------------------------------------------------------------------------------------------

def test_fedra_draws_whole_layers_that_fit_and_fill_the_budget() -> None:
    for seed in range(30):
        context = synthetic_context(seed, margin=0.05, layers=5)
        rng = random.Random(seed)
        clients = [ClientInfo(cid, 10, b) for cid, b in enumerate(random_budgets(context, rng, 5))]
        strategy = STRATEGIES["fedra"](context)
        strategy.check_budgets(clients)
        groups = layer_groups(context.modules)
        for server_round in range(1, 6):
            for cid, assignment in strategy.configure_train(server_round, clients, {}).items():
                budget, modules = clients[cid].budget_bytes, assignment.modules
                assert in_context_order(context, modules)
                if budget is None:
                    assert modules == tuple(context.modules)
                    continue
                room = context.usable(budget)
                assert modules and context.cost_model.cost(modules) <= room
                if not any(context.cost_model.cost(groups[l]) <= room for l in groups):
                    assert list(modules) == most_modules(context.cost_model, context.modules, room)  # the fallback
                    continue
                assert is_whole_layers(context, modules)
                for layer in set(groups) - trained_layers(modules):  # no further layer fits
                    assert context.cost_model.cost([*modules, *groups[layer]]) > room


def test_fedra_differs_between_rounds_and_replays_for_the_same_seed() -> None:
    context = flat_context(8)
    clients = [ClientInfo(cid, 10, layers_budget(3)) for cid in range(4)]
    first, second = STRATEGIES["fedra"](context), STRATEGIES["fedra"](context)
    plans = [first.configure_train(r, clients, {}) for r in range(1, 11)]
    assert plans == [second.configure_train(r, clients, {}) for r in range(1, 11)]
    assert all(len(trained_layers(a.modules)) == 3 for p in plans for a in p.values())
    assert len({p[0].modules for p in plans}) >= 5  # a new allocation each round
    assert len({a.modules for a in plans[0].values()}) >= 2  # and per client
    # a client's draw depends on (seed, round, cid) only, not on who else is sampled
    assert first.configure_train(4, clients[2:3], {})[2] == plans[3][2]
    other = STRATEGIES["fedra"](make_context(context.cost_model, 8, ("q", "v"), seed=1))
    assert [other.configure_train(r, clients, {}) for r in range(1, 11)] != plans


def test_fedra_is_uniform_over_layers_when_layers_cost_the_same() -> None:
    context = flat_context(4)
    strategy = STRATEGIES["fedra"](context)
    counts = Counter(l for r in range(1, 2001) for l in trained_layers(strategy.configure_train(r, [ClientInfo(0, 1, layers_budget(2))], {})[0].modules))
    assert all(abs(counts[l] / 2000 - 0.5) < 0.05 for l in range(4))


# -- layer patterns ---------------------------------------------------------------------------------

def test_pattern_vectors_have_their_shape() -> None:
    assert tuple(pattern_probabilities("bottleneck", 12)) == (1 / 9, 1 / 9, 1 / 9, 2 / 27, 2 / 27, 1 / 27, 1 / 27, 1 / 27, 2 / 27, 1 / 9, 1 / 9, 1 / 9)
    assert tuple(pattern_probabilities("bottleneck", 12)) == BOTTLENECK_12
    for depth in range(1, 33):
        vectors = {p: pattern_probabilities(p, depth) for p in PROBABILITY_PATTERNS}
        for name, p in vectors.items():
            assert p.shape == (depth,) and np.all(p > 0) and np.isclose(p.sum(), 1.0), name
        assert np.allclose(vectors["uniform"], 1 / depth)
        assert np.allclose(vectors["inverted-triangle"], vectors["triangle"][::-1])
        if depth > 1:
            assert np.all(np.diff(vectors["triangle"]) > 0) and np.all(np.diff(vectors["inverted-triangle"]) < 0)
            assert np.allclose(np.diff(vectors["triangle"]), vectors["triangle"][0])  # linear in depth
        b = vectors["bottleneck"]
        if depth >= 3:
            assert 0 < int(np.argmin(b)) < depth - 1 and min(b[0], b[-1]) > b[depth // 2]
            assert np.isclose(b[0], b[-1]) and b[0] == b.max()  # both ends sit at 1/9 of the prior
    with pytest.raises(ValueError, match="unknown layer pattern 'top'"):
        pattern_probabilities("top", 12)


def test_priority_order_breaks_ties_toward_the_top() -> None:
    assert priority_order(pattern_probabilities("bottleneck", 12)) == [11, 10, 9, 2, 1, 0, 8, 4, 3, 7, 6, 5]
    assert priority_order(pattern_probabilities("uniform", 5)) == [4, 3, 2, 1, 0]
    assert priority_order(pattern_probabilities("inverted-triangle", 4)) == [0, 1, 2, 3]


@pytest.mark.parametrize(("pattern", "k", "expected"), [
    ("bottleneck", 3, {9, 10, 11}),
    ("bottleneck", 6, {0, 1, 2, 9, 10, 11}),
    ("bottleneck", 8, {0, 1, 2, 9, 10, 11, 8, 4}),
    ("triangle", 4, {8, 9, 10, 11}),
    ("inverted-triangle", 4, {0, 1, 2, 3}),
    ("uniform", 5, {7, 8, 9, 10, 11}),
    ("top", 5, {7, 8, 9, 10, 11}),
])
def test_fixed_patterns_take_the_most_probable_layers_that_fit(pattern: str, k: int, expected: set[int]) -> None:
    context = flat_context(12)
    strategy = STRATEGIES["layer-pattern"](context, STRATEGIES["layer-pattern"].Options(pattern=pattern))
    clients = [ClientInfo(0, 1, layers_budget(k)), ClientInfo(1, 1, None)]
    for server_round in (1, 2, 7):  # fixed: the same every round
        plan = strategy.configure_train(server_round, clients, {})
        assert trained_layers(plan[0].modules) == expected and is_whole_layers(context, plan[0].modules)
        assert plan[1].modules == tuple(context.modules)


def test_fixed_bottleneck_skips_a_probable_layer_whose_activation_does_not_fit() -> None:
    # layers 0..2 store so much activation that none fits beside the top three: the next most probable are taken
    activation = (500, 400, 300) + (0,) * 9
    context = flat_context(12, activation=activation)
    strategy = STRATEGIES["layer-pattern"](context)
    plan = strategy.configure_train(1, [ClientInfo(0, 1, layers_budget(5))], {})
    assert trained_layers(plan[0].modules) == {11, 10, 9, 8, 4}


def test_fixed_mode_is_the_greedy_in_priority_order_on_random_cost_models() -> None:
    for seed in range(30):
        context = synthetic_context(seed, margin=0.02, layers=6)
        rng = random.Random(seed)
        pattern = rng.choice(PROBABILITY_PATTERNS)
        strategy = STRATEGIES["layer-pattern"](context, STRATEGIES["layer-pattern"].Options(pattern=pattern))
        groups = layer_groups(context.modules)
        for budget in random_budgets(context, rng, 6):
            if budget is None:
                continue
            modules = strategy.configure_train(1, [ClientInfo(0, 1, budget)], {})[0].modules
            room = context.usable(budget)
            assert modules and context.cost_model.cost(modules) <= room
            taken: list[int] = []  # in priority order, a layer is taken iff it fits beside those taken before it
            for layer in priority_order(pattern_probabilities(pattern, 6)):
                if context.cost_model.cost([m for l in [*taken, layer] for m in groups[l]]) <= room:
                    taken.append(layer)
            if taken:
                assert trained_layers(modules) == set(taken) and is_whole_layers(context, modules)
            else:
                assert list(modules) == most_modules(context.cost_model, context.modules, room)


def test_top_pattern_is_one_contiguous_block_from_the_top() -> None:
    context = flat_context(12)
    cost_model = CostModel(100, (0,) * 12, {**context.cost_model.module, "9.q": 100})  # layer 9 is dear
    context = make_context(cost_model, 12, ("q", "v"))
    options = STRATEGIES["layer-pattern"].Options(pattern="top")
    strategy = STRATEGIES["layer-pattern"](context, options)
    assert trained_layers(strategy.configure_train(1, [ClientInfo(0, 1, layers_budget(5))], {})[0].modules) == {10, 11}
    uniform = STRATEGIES["layer-pattern"](context, options.model_copy(update={"pattern": "uniform"}))  # skips layer 9 instead
    assert trained_layers(uniform.configure_train(1, [ClientInfo(0, 1, layers_budget(5))], {})[0].modules) == {11, 10, 8, 7, 6}


def test_randomized_patterns_sample_by_their_probabilities() -> None:
    context = flat_context(12)
    options = STRATEGIES["layer-pattern"].Options(pattern="bottleneck", randomized=True)
    strategy = STRATEGIES["layer-pattern"](context, options)
    client = ClientInfo(3, 1, layers_budget(1))  # room for one layer: the first draw
    counts = Counter(trained_layers(strategy.configure_train(r, [client], {})[3].modules).pop() for r in range(1, 4001))
    for layer, p in enumerate(BOTTLENECK_12):
        assert abs(counts[layer] / 4000 - p) < 0.025, (layer, counts[layer] / 4000, p)


def test_randomized_patterns_differ_between_rounds_fit_and_replay() -> None:
    for pattern in PROBABILITY_PATTERNS:
        options = STRATEGIES["layer-pattern"].Options(pattern=pattern, randomized=True)
        context = synthetic_context(7, margin=0.05, layers=6)
        low, high = context.cost_model.cheapest()[1], context.cost_model.full()
        clients = [ClientInfo(cid, 10, low + (high - low) * (cid + 1) // 4) for cid in range(3)]
        first, second = STRATEGIES["layer-pattern"](context, options), STRATEGIES["layer-pattern"](context, options)
        first.check_budgets(clients)
        plans = [first.configure_train(r, clients, {}) for r in range(1, 13)]
        assert plans == [second.configure_train(r, clients, {}) for r in range(1, 13)]
        assert len({p[1].modules for p in plans}) >= 3, pattern
        for plan in plans:
            for cid, a in plan.items():
                assert context.cost_model.cost(a.modules) <= context.usable(clients[cid].budget_bytes)
                assert is_whole_layers(context, a.modules) and in_context_order(context, a.modules)


def test_weighted_order_draws_every_layer_once() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        order = weighted_order([0.5, 0.0, 0.2, 0.3], rng)
        assert sorted(order) == [0, 1, 2, 3] and order[-1] == 1  # zero probability: last
    with pytest.raises(ValueError):
        weighted_order([0.5, -0.1], rng)


def test_layer_pattern_options_are_checked() -> None:
    options_type = STRATEGIES["layer-pattern"].Options
    assert options_type().pattern == "bottleneck" and options_type().randomized is False
    with pytest.raises(ValidationError):
        options_type(pattern="diamond")
    with pytest.raises(ValidationError, match="deterministic"):
        options_type(pattern="top", randomized=True)
    with pytest.raises(ConfigError, match="unknown key 'layers'"):
        parse_config({"strategy": "layer-pattern", "strategy_options": {"layers": 3}})
    with pytest.raises(ConfigError, match="strategy_options"):
        parse_config({"strategy": "layer-pattern", "strategy_options": {"pattern": "diamond"}})
    config = parse_config({"strategy": "layer-pattern", "strategy_options": {"pattern": "triangle", "randomized": True}})
    assert config.strategy_settings() == options_type(pattern="triangle", randomized=True)


# -- all three ----------------------------------------------------------------------------------------

VARIANTS = [("straggler", {}), ("fedra", {}), *[("layer-pattern", {"pattern": p}) for p in ("top", *PROBABILITY_PATTERNS)],
            *[("layer-pattern", {"pattern": p, "randomized": True}) for p in PROBABILITY_PATTERNS]]


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_a_budget_that_passes_the_start_up_check_never_aborts_a_round(name: str, options: dict) -> None:
    for seed in range(40):
        context = synthetic_context(seed, margin=random.Random(seed).choice([0.0, 0.01, 0.2]))
        cheapest = context.cost_model.cheapest()[1]
        rng = random.Random(seed)
        budgets = [rng.randint(cheapest - 5, int(cheapest / (1 - context.memory_margin)) + 5) for _ in range(6)]
        budgets += [rng.randint(cheapest, context.cost_model.full() + 10) for _ in range(3)]
        strategy = STRATEGIES[name](context, STRATEGIES[name].Options.model_validate(options))
        for client in (ClientInfo(cid, 10, b) for cid, b in enumerate(budgets)):
            try:
                strategy.check_budgets([client])
                passed = True
            except FedpilotError:
                passed = False
            for server_round in (1, 2, 3):
                if passed:
                    modules = strategy.configure_train(server_round, [client], {})[client.cid].modules
                    assert modules and context.cost_model.cost(modules) <= context.usable(client.budget_bytes)
                else:
                    with pytest.raises(FedpilotError):
                        strategy.configure_train(server_round, [client], {})


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_each_module_is_averaged_over_the_clients_that_trained_it(name: str, options: dict) -> None:
    context = synthetic_context(2)
    rng = np.random.default_rng(0)
    mid = (context.cost_model.cheapest()[1] + context.cost_model.full()) // 2
    clients = [ClientInfo(0, 3, mid), ClientInfo(1, 1, None), ClientInfo(2, 2, context.cost_model.full())]
    strategy = STRATEGIES[name](context, STRATEGIES[name].Options.model_validate(options))
    strategy.check_budgets(clients)
    plan = strategy.configure_train(1, clients, {})
    tensors = {k: rng.standard_normal((2, 3)).astype(np.float32) for ks in context.module_keys.values() for k in ks}
    updates = [
        ClientUpdate(c.cid, c.num_samples, {k: rng.standard_normal((2, 3)).astype(np.float32) for k in context.reply_keys(plan[c.cid])})
        for c in clients
    ]
    updates = [updates[0], updates[2]]  # client 1 dropped out: its modules are averaged over the others
    result = strategy.aggregate_train(1, tensors, updates)
    expected = sample_weighted_average(tensors, updates)
    assert result.keys() == tensors.keys() and all(np.array_equal(result[k], expected[k]) for k in tensors)
    for key in tensors:
        senders = [u for u in updates if key in u.tensors]
        if not senders:
            assert np.array_equal(result[key], tensors[key])
        elif len(senders) == 1:
            assert np.array_equal(result[key], senders[0].tensors[key])


def test_fit_layers_skips_or_stops_at_a_miss() -> None:
    context = flat_context(4)
    cost_model = CostModel(100, (0,) * 4, {**context.cost_model.module, "2.q": 50})
    groups = layer_groups(context.modules)
    assert fit_layers([3, 2, 1, 0], groups, cost_model, 100 + 60) == [3, 1, 0]
    assert fit_layers([3, 2, 1, 0], groups, cost_model, 100 + 60, stop_at_miss=True) == [3]
    assert len(plan_whole_layers([0], context.modules, cost_model, 100 + 15)) == 1  # no whole layer: the largest partial set
    assert plan_whole_layers([3, 2, 1, 0], context.modules, cost_model, 100 + 9) is None
