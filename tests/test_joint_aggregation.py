"""fedpilot-rank: mixed-rank aggregation against a numpy reference, what clients receive, and its plans
against fedpilot's where ranks do not choose."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from fedpilot.config import TrainSettings, parse_config
from fedpilot.core.errors import ConfigError
from fedpilot.core.keys import LORA_A, LORA_B, tensor_key
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.messages import ScoreTask, TrainTask
from fedpilot.runtime.server import Server
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext
from fedpilot.strategies.aggregation_utils import component_mean_delta
from fedpilot.strategies.base import ClientScores, ClientUpdate
from fedpilot.strategies.compensation import TemporalCompensation
from fedpilot.strategies.fedpilot_rank import default_rank_options

A, B = "0.q/lora_A", "0.q/lora_B"


def rng_tensors(seed: int, rank: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {A: rng.standard_normal((rank, 3)).astype(np.float32), B: rng.standard_normal((5, rank)).astype(np.float32)}


def test_component_mean_against_numpy() -> None:
    """Client 1 (10 samples) trained rank 2 of a rank-4 module, client 2 (30 samples) rank 4: components
    0-1 are the 1:3 mean of both changes, components 2-3 client 2's change alone."""
    current, low, high = rng_tensors(0, 4), rng_tensors(1, 2), rng_tensors(2, 4)
    updates = [ClientUpdate(1, 10, low), ClientUpdate(2, 30, high)]
    for key, axis in ((A, 0), (B, 1)):
        g = current[key].astype(np.float64)
        d_low, d_high = low[key].astype(np.float64) - np.take(g, [0, 1], axis=axis), high[key].astype(np.float64) - g
        expected = d_high.copy()
        head = (slice(None),) * axis + (slice(0, 2),)
        expected[head] = 0.25 * d_low + 0.75 * d_high[head]
        mean, samples = component_mean_delta(key, current[key], updates)
        np.testing.assert_allclose(mean, expected.astype(np.float32), rtol=1e-6, atol=1e-7)
        assert mean.dtype == np.float32
        assert np.asarray(samples).reshape(-1).tolist() == [40, 40, 30, 30]
    # one shape: the plain sample-weighted mean and the sample count
    mean, samples = component_mean_delta(A, current[A], [ClientUpdate(2, 30, high), ClientUpdate(3, 10, rng_tensors(3, 4))])
    assert samples == 40.0 and mean.shape == (4, 3)


def test_component_mean_refuses_other_shapes() -> None:
    current = rng_tensors(0, 4)
    wide = {A: np.zeros((2, 4), dtype=np.float32)}
    with pytest.raises(ValueError, match="only its rank axis may be lower"):
        component_mean_delta(A, current[A], [ClientUpdate(1, 10, wide), ClientUpdate(2, 10, rng_tensors(1, 4))])
    with pytest.raises(ValueError, match="head/w"):
        component_mean_delta("head/w", np.zeros((2, 2), np.float32), [ClientUpdate(1, 1, {"head/w": np.zeros((1, 2), np.float32)})])


def test_stagg_per_rank_component_against_numpy() -> None:
    """stagg momentum on mixed ranks: per component, D, coverage c, history h = (1 - beta) D and
    theta + D + eta (1 - c) min(1, 1 / tau) h; a third client (20 samples) trained nothing of the module."""
    eta, beta, tau = 0.5, 0.9, 3
    stagg = TemporalCompensation({"0.q": [A, B], "head": ["head/w"]}, ["0.q"], eta, beta, tau)
    current = rng_tensors(0, 4) | {"head/w": np.ones((2, 2), np.float32)}
    low, high = rng_tensors(1, 2), rng_tensors(2, 4)
    heads = [np.full((2, 2), v, np.float32) for v in (2.0, 3.0, 4.0)]
    updates = [ClientUpdate(1, 10, low | {"head/w": heads[0]}), ClientUpdate(2, 30, high | {"head/w": heads[1]}),
               ClientUpdate(3, 20, {"head/w": heads[2]})]
    result = stagg.aggregate(current, updates)
    coverage = np.array([40, 40, 30, 30]) / 60
    for key, axis in ((A, 0), (B, 1)):
        g = current[key].astype(np.float64)
        head = (slice(None),) * axis + (slice(0, 2),)
        delta = high[key].astype(np.float64) - g
        delta[head] = (10 * (low[key] - g[head]) + 30 * delta[head]) / 40
        shape = [1, 1]
        shape[axis] = 4
        weight = (eta * (1 - coverage) * min(1.0, 1 / tau)).reshape(shape)
        expected = g + delta + weight * (1 - beta) * delta
        np.testing.assert_allclose(result[key], expected, rtol=1e-5, atol=1e-6)
        assert result[key].dtype == np.float32 and result[key].shape == current[key].shape
    np.testing.assert_allclose(result["head/w"], np.full((2, 2), (2 * 10 + 3 * 30 + 4 * 20) / 60), rtol=1e-6)


# -- the strategy on a synthetic federation ---------------------------------------------------------
RANK, D, LAYERS = 8, 6, 4
MODULES = [f"{layer}.{t}" for layer in range(LAYERS) for t in ("q", "v")]
KEYS = {m: [tensor_key(m, LORA_A), tensor_key(m, LORA_B)] for m in MODULES} | {"head": ["head/w"]}
COST = CostModel(fixed=1000, activation=(400, 300, 200, 100), module={m: 80 for m in MODULES}, rank=RANK, rank_bytes={m: 8 for m in MODULES})
BUDGETS = (1200, 1400, 1550, 1700, None)


def context() -> FederationContext:
    shapes = {k: ((RANK, D) if k.endswith(LORA_A) else (D, RANK) if k.endswith(LORA_B) else (2, D)) for ks in KEYS.values() for k in ks}
    return FederationContext(MODULES, KEYS, shapes, LAYERS, RANK, COST, memory_margin=0.0, seed=3, scaling=0.5)


class Transport:
    """Clients that change what they received at random, and remember the tasks."""

    def __init__(self, ctx: FederationContext) -> None:
        self.ctx = ctx
        self.tasks: list[list[TrainTask]] = []

    def score(self, server_round: int, tasks: Sequence[ScoreTask]) -> list[ClientScores]:
        rng = np.random.default_rng([server_round, 7])
        return [ClientScores(t.cid, {m: float(rng.random()) + 0.01 for m in t.modules}) for t in tasks]

    def train(self, server_round: int, tasks: Sequence[TrainTask]) -> list[ClientUpdate]:
        self.tasks.append(list(tasks))
        replies = []
        for task in tasks:
            rng = np.random.default_rng([server_round, task.cid])
            keys = self.ctx.reply_keys(task.assignment)
            replies.append(ClientUpdate(task.cid, 10 + task.cid, {k: (task.tensors[k] + 0.1 * rng.standard_normal(task.tensors[k].shape)).astype(np.float32) for k in keys}))
        return replies


def run(name: str, options: dict, rounds: int = 4) -> tuple[Server, Transport]:
    ctx = context()
    strategy_cls = STRATEGIES[name]
    rng = np.random.default_rng(0)
    initial = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in ctx.shapes.items()}
    clients = [ClientInfo(cid, 10 + cid, budget) for cid, budget in enumerate(BUDGETS)]
    server = Server(strategy_cls(ctx, strategy_cls.Options(**options)), clients, initial, TrainSettings(), seed=0, update_norm_bound=None)
    server.check_budgets()
    transport = Transport(ctx)
    for server_round in range(1, rounds + 1):
        assert server.run_round(server_round, transport).skipped is None
    return server, transport


def test_zero_and_the_global_rank_is_fedpilot() -> None:
    """rank_options [0, R]: the same assignments and the same global tensors as fedpilot, round after round."""
    ranked, ranked_tasks = run("fedpilot-rank", {"rank_options": [0, RANK]})
    plain, plain_tasks = run("fedpilot", {})
    assert [[(t.cid, t.assignment) for t in r] for r in ranked_tasks.tasks] == [[(t.cid, t.assignment) for t in r] for r in plain_tasks.tasks]
    assert all(np.array_equal(ranked.global_tensors[k], plain.global_tensors[k]) for k in plain.global_tensors)


def test_default_options_plan_lower_ranks_within_budget_and_send_truncations() -> None:
    server, transport = run("fedpilot-rank", {})
    ranked = 0
    for tasks in transport.tasks:
        for task in tasks:
            assignment, budget = task.assignment, BUDGETS[task.cid]
            cost = COST.cost(assignment.modules, assignment.ranks)
            assert budget is None or cost <= budget
            assert all(r in (1, 2, 4) for r in assignment.ranks.values())
            ranked += bool(assignment.ranks)
            for module, rank in assignment.ranks.items():  # what it received: the first r components (of that round's global)
                a, b = task.tensors[tensor_key(module, LORA_A)], task.tensors[tensor_key(module, LORA_B)]
                assert a.shape == (rank, D) and b.shape == (D, rank)
    assert ranked, "no client trained below the global rank"
    assert all(server.global_tensors[k].shape == context().shapes[k] for k in server.global_tensors)
    plan = server.strategy.ranks
    assert plan and all(set(r.values()) <= {1, 2, 4, 8} for r in plan.values())


def test_the_options_are_checked() -> None:
    assert default_rank_options(8) == [0, 1, 2, 4, 8] and default_rank_options(6) == [0, 1, 3, 6]
    with pytest.raises(ConfigError, match="exceed the global LoRA rank"):
        STRATEGIES["fedpilot-rank"](context(), STRATEGIES["fedpilot-rank"].Options(rank_options=[0, 16]))
    with pytest.raises(ConfigError, match="stagg: momentum"):
        parse_config({"strategy": "fedpilot-rank", "strategy_options": {"stagg": "memory"}})
    with pytest.raises(ConfigError, match="rank_options"):
        parse_config({"strategy": "fedpilot-rank", "strategy_options": {"rank_options": [0]}})
    assert STRATEGIES["fedpilot-rank"].Options(rank_options=[8, 2, 2]).rank_options == [0, 2, 8]


def test_a_checkpoint_keeps_the_ranks() -> None:
    server, _ = run("fedpilot-rank", {"keep_margin": 0.1}, rounds=2)
    state = server.strategy.state_dict()
    fresh = STRATEGIES["fedpilot-rank"](context(), STRATEGIES["fedpilot-rank"].Options(keep_margin=0.1))
    fresh.load_state_dict(state)
    assert fresh.ranks == server.strategy.ranks and fresh.ranks


def test_plan_shows_the_rank_of_each_module_per_client() -> None:
    from fedpilot.cli.plan import render_plan

    plan = {
        "strategy": "fedpilot-rank", "round": 1, "num_layers": 2, "rank": 8, "targets": ["query", "value"],
        "letters": {"query": "q", "value": "v"}, "full_lora_bytes": 1 << 30,
        "clients": [
            {"cid": 0, "num_samples": 5, "budget_bytes": 1 << 29, "modules": ["1.query", "1.value", "0.value"],
             "ranks": {"1.value": 2, "0.value": 4}, "predicted_bytes": 1 << 28, "value": 0.5},
            {"cid": 7, "num_samples": 5, "budget_bytes": None, "modules": ["0.query", "0.value", "1.query", "1.value"],
             "ranks": {}, "predicted_bytes": 1 << 29, "value": 1.0},
        ],
    }
    lines = render_plan(plan).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("LoRA rank per module"))
    assert "global rank 8" in lines[start]
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 2:start + 5]}
    assert rows["layer"] == ["c0", "c7"] and rows["1"] == ["8,2", "8,8"] and rows["0"] == [".,4", "8,8"]
    plan["clients"][0]["ranks"] = {}
    assert not any(line.startswith("LoRA rank per module") for line in render_plan(plan).splitlines())


def test_a_cost_model_without_rank_terms_is_refused_before_round_one() -> None:
    flat = CostModel(fixed=1000, activation=(400, 300, 200, 100), module={m: 80 for m in MODULES})
    strategy = STRATEGIES["fedpilot-rank"](context())
    with pytest.raises(ConfigError, match="no per-rank term"):
        strategy.check_budgets([ClientInfo(0, 10, 1500, flat)])
    STRATEGIES["fedpilot-rank"](context(), STRATEGIES["fedpilot-rank"].Options(rank_options=[0, RANK])).check_budgets([ClientInfo(0, 10, 1500, flat)])
