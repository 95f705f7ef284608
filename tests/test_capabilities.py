"""Every registered strategy's declared :class:`~fedpilot.strategies.base.Capabilities` against what it does,
on a small synthetic federation driven by the real (pure) server: budgets kept or not, one module set
per round or one per client, LoRA ranks, the server's proxy set, base deltas, what the aggregate is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from fedpilot.config import TrainSettings, parse_config
from fedpilot.core.errors import ConfigError
from fedpilot.core.keys import BASE_DELTA, LORA_A, LORA_B, LORA_PARTS, tensor_key
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.messages import ScoreTask, TrainTask
from fedpilot.runtime.server import Server
from fedpilot.strategies import STRATEGIES, Capabilities, ClientInfo, FederationContext, Strategy, accepted_options
from fedpilot.strategies.base import PAYLOADS, ClientScores, ClientUpdate

NAMES = sorted(STRATEGIES)
RANK, D, LAYERS, SCALING = 4, 6, 4, 0.5
MODULES = [f"{layer}.{t}" for layer in range(LAYERS) for t in ("q", "v")]
KEYS = {m: [tensor_key(m, LORA_A), tensor_key(m, LORA_B)] for m in MODULES} | {"head": ["head/w"]}
COST = CostModel(
    fixed=1000, activation=(400, 300, 200, 100), module={m: 40 for m in MODULES}, rank=RANK, rank_bytes={m: 10 for m in MODULES}
)
# 1200: the top layer only, no rank fits every module; 1500: every module at rank 1; 1650: at rank 3; None: unlimited
BUDGETS = (1200, 1500, 1650, None)
ROUNDS = 4


def context(base_deltas: bool) -> FederationContext:
    shapes = {k: ((RANK, D) if k.endswith(LORA_A) else (D, RANK) if k.endswith(LORA_B) else (2, D)) for ks in KEYS.values() for k in ks}
    if base_deltas:
        shapes |= {tensor_key(m, BASE_DELTA): (D, D) for m in MODULES}
    return FederationContext(MODULES, KEYS, shapes, LAYERS, RANK, COST, memory_margin=0.0, seed=3, scaling=SCALING)


class RecordingTransport:
    """Clients that answer every task with a random change of what they received, and remember the tasks."""

    def __init__(self, context: FederationContext) -> None:
        self.context = context
        self.tasks: dict[int, list[TrainTask]] = {}
        self.replies: dict[int, list[ClientUpdate]] = {}

    def score(self, server_round: int, tasks: Sequence[ScoreTask]) -> list[ClientScores]:
        rng = np.random.default_rng([server_round, 7])
        return [ClientScores(t.cid, {m: float(rng.random()) + 0.01 for m in t.modules}) for t in tasks]

    def train(self, server_round: int, tasks: Sequence[TrainTask]) -> list[ClientUpdate]:
        self.tasks[server_round] = list(tasks)
        replies = []
        for task in tasks:
            rng = np.random.default_rng([server_round, task.cid])
            tensors = {
                k: (task.tensors[k] + 0.1 * rng.standard_normal(task.tensors[k].shape)).astype(np.float32)
                for k in self.context.reply_keys(task.assignment)
            }
            replies.append(ClientUpdate(task.cid, 10 + task.cid, tensors))
        self.replies[server_round] = replies
        return replies


def run(name: str, budgets: Sequence[int | None], rounds: int) -> tuple[Server, RecordingTransport, list[int]]:
    """``rounds`` rounds of ``name`` on the synthetic federation; also the rounds its proxy was scored in."""
    capabilities = STRATEGIES[name].capabilities
    ctx = context(capabilities.base_deltas)
    rng = np.random.default_rng(0)
    initial = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in ctx.shapes.items()}
    proxied: list[int] = []

    def proxy(tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        proxied.append(len(proxied))
        return {m: 1.0 + i for i, m in enumerate(MODULES)}

    clients = [ClientInfo(cid, 10 + cid, budget) for cid, budget in enumerate(budgets)]
    server = Server(STRATEGIES[name](ctx), clients, initial, TrainSettings(), seed=0, update_norm_bound=None, proxy=proxy)
    server.check_budgets()  # every strategy can plan this federation
    transport = RecordingTransport(ctx)
    for server_round in range(1, rounds + 1):
        assert server.run_round(server_round, transport).skipped is None
    return server, transport, proxied


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[Server, RecordingTransport, list[int]]]:
    return {name: run(name, BUDGETS, ROUNDS) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_declares_its_own_capabilities(name: str) -> None:
    strategy = STRATEGIES[name]
    assert isinstance(vars(strategy).get("capabilities"), Capabilities), f"{name} must declare capabilities = Capabilities(...) itself"
    assert accepted_options(strategy) <= set(strategy.Options.model_fields)
    assert strategy.capabilities.payload in PAYLOADS


@pytest.mark.parametrize("name", NAMES)
def test_memory_awareness(name: str, runs) -> None:
    """Memory-aware: every assignment fits its client's usable budget; memory-unaware: some overruns it here."""
    server, transport, _ = runs[name]
    over = []
    for tasks in transport.tasks.values():
        for task in tasks:
            budget = BUDGETS[task.cid]
            cost = server.context.cost_model_for(server.clients[task.cid]).cost(task.assignment.modules, task.assignment.ranks)
            if budget is not None and cost > server.context.usable(budget):
                over.append((task.cid, cost, budget))
    if STRATEGIES[name].capabilities.memory_aware:
        assert not over
    else:
        assert over, f"{name} declares itself memory-unaware but kept every budget"


@pytest.mark.parametrize("name", NAMES)
def test_per_client_assignment(name: str, runs) -> None:
    _, transport, _ = runs[name]
    sets_per_round = [{tuple(sorted(t.assignment.modules)) for t in tasks} for tasks in transport.tasks.values()]
    assert all(sets_per_round)
    if STRATEGIES[name].capabilities.per_client_assignment:
        assert any(len(s) > 1 for s in sets_per_round), f"{name} gave every client of every round the same modules"
    else:
        assert all(len(s) == 1 for s in sets_per_round)


@pytest.mark.parametrize("name", NAMES)
def test_rank_heterogeneity(name: str, runs) -> None:
    _, transport, _ = runs[name]
    ranked = [t.assignment.ranks for tasks in transport.tasks.values() for t in tasks if t.assignment.ranks]
    if STRATEGIES[name].capabilities.rank_heterogeneous:
        assert ranked and all(1 <= r < RANK for ranks in ranked for r in ranks.values())
    else:
        assert not ranked


@pytest.mark.parametrize("name", NAMES)
def test_the_proxy_set(name: str, runs) -> None:
    """Only a strategy that needs the proxy set asks for it (and then does); without one it is refused."""
    _, _, proxied = runs[name]
    capabilities = STRATEGIES[name].capabilities
    assert bool(proxied) == capabilities.needs_proxy
    config = parse_config({"strategy": name})
    assert config.proxy_fraction() == (capabilities.proxy_default_fraction if capabilities.needs_proxy else None)
    if capabilities.needs_proxy:
        with pytest.raises(ValueError):
            Server(STRATEGIES[name](context(capabilities.base_deltas)), [ClientInfo(0, 10)], {}, TrainSettings(), seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_base_deltas(name: str, runs) -> None:
    """A strategy with base deltas moves them; the config refuses a payload without them."""
    server, _, _ = runs[name]
    deltas = [k for k in server.global_tensors if k.endswith(BASE_DELTA)]
    if STRATEGIES[name].capabilities.base_deltas:
        assert len(deltas) == len(MODULES)
        with pytest.raises(ConfigError, match="base deltas"):
            parse_config({"strategy": name, "federation": {"payload": "assigned"}})
    else:
        assert not deltas
        parse_config({"strategy": name, "federation": {"payload": "assigned"}})


def effective(tensors: Mapping[str, np.ndarray], module: str, delta: np.ndarray | None) -> np.ndarray:
    """``D + s B A`` (D = 0 without base deltas) in float64."""
    b, a = (tensors[tensor_key(module, p)].astype(np.float64) for p in (LORA_B, LORA_A))
    return (0.0 if delta is None else delta.astype(np.float64)) + SCALING * (b @ a)


@pytest.mark.parametrize("name", NAMES)
def test_the_payload_is_what_the_aggregate_of_one_client_holds(name: str) -> None:
    """One unlimited client trains every module for a round; what its update becomes says what the payload is."""
    server, transport, _ = run(name, [None], rounds=1)
    before = {k: v for k, v in transport.tasks[1][0].tensors.items()}
    sent = transport.replies[1][0].tensors
    after = server.global_tensors
    payload = STRATEGIES[name].capabilities.payload
    parts = transport.tasks[1][0].assignment.parts
    assert parts == ((LORA_B,) if payload == "lora_b" else LORA_PARTS)
    for module in MODULES:
        if payload in ("lora", "lora_b"):  # factor by factor: the client's own tensors, frozen A untouched
            for part in LORA_PARTS:
                key = tensor_key(module, part)
                np.testing.assert_allclose(after[key], sent.get(key, before[key]), rtol=1e-5, atol=1e-6)
        elif payload == "products":  # the product B A, refactorised
            np.testing.assert_allclose(effective(after, module, None), effective(sent, module, None), rtol=1e-4, atol=1e-5)
        else:  # lora+base_delta: the effective weight D + s B A
            old_delta = before[tensor_key(module, BASE_DELTA)]
            np.testing.assert_allclose(
                effective(after, module, after[tensor_key(module, BASE_DELTA)]), effective(sent, module, old_delta), rtol=1e-4, atol=1e-5
            )
    np.testing.assert_allclose(after["head/w"], sent["head/w"], rtol=1e-5, atol=1e-6)


def test_a_declaration_is_checked() -> None:
    with pytest.raises(ValueError, match="payload"):
        Capabilities(memory_aware=True, per_client_assignment=False, rank_heterogeneous=False, payload="deltas")
    with pytest.raises(ValueError, match="contradicts"):
        Capabilities(memory_aware=True, per_client_assignment=False, rank_heterogeneous=False, base_deltas=True)
    with pytest.raises(ValueError, match="option names"):
        Capabilities(memory_aware=True, per_client_assignment=False, rank_heterogeneous=False, options="ig_weight")
    with pytest.raises(TypeError, match="capabilities"):
        type("Legacy", (Strategy,), {"memory_aware": False})
