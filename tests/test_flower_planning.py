"""What the Flower deployment adds to planning, tested without processes: each client planned with its
own cost model (``ClientInfo.cost_model``), ``federation.min_replies`` and the config fields of a deployment."""

from __future__ import annotations

import numpy as np
import pytest

from fedpilot.config import TrainSettings, parse_config
from fedpilot.core.errors import ConfigError
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.messages import Failure
from fedpilot.runtime.server import Server
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext
from fedpilot.strategies.base import ClientScores, ClientUpdate

LAYERS, TARGETS, RANK = 4, ("q", "v"), 4
MODULES = [f"{layer}.{t}" for layer in range(LAYERS) for t in TARGETS]


def cost_model(activation: tuple[int, ...], module: int, device: str) -> CostModel:
    return CostModel(
        fixed=1000, activation=activation, module={m: module for m in MODULES}, rank=RANK,
        rank_bytes={m: 5 for m in MODULES}, source="calibrated", settings={"device": device},
    )


# The same model calibrated on two kinds of device: on "gpu" backpropagating to the bottom layers costs
# far more (activations), on "cpu" far less; a module costs alike.
GPU = cost_model((800, 600, 300, 100), 40, "gpu")
CPU = cost_model((120, 90, 60, 30), 40, "cpu")
BUDGET = 1000 + 300 + 4 * 40 + 10  # under GPU: the top two layers (lowest layer 2); under CPU: everything


def context(federation: CostModel = GPU) -> FederationContext:
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in MODULES} | {"head": ["head/w"]}
    shapes = {k: ((RANK, 3) if k.endswith("lora_A") else (3, RANK) if k.endswith("lora_B") else (2, 3)) for ks in keys.values() for k in ks}
    return FederationContext(MODULES, keys, shapes, LAYERS, RANK, federation, memory_margin=0.0, seed=0)


def global_tensors(ctx: FederationContext) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in ctx.shapes.items()}


# strategies whose planning or budget check prices a client (the mechanical change), with their options
PRICED = ["fedpilot", "fedpilot-noig", "fedpilot-nostagg", "exclusive", "straggler", "fedra", "layer-pattern", "hetlora", "flexlora"]


def plan(name: str, clients: list[ClientInfo], ctx: FederationContext | None = None) -> dict[int, object]:
    ctx = ctx or context()
    strategy = STRATEGIES[name](ctx)
    strategy.check_budgets(clients)
    chosen = strategy.sample(1, clients)
    requests = strategy.configure_score(1, chosen, global_tensors(ctx))
    if requests:
        from fedpilot.strategies.base import ClientScores

        strategy.aggregate_score(1, [ClientScores(cid, {m: 1.0 + i for i, m in enumerate(mods)}) for cid, mods in requests.items()])
    return strategy.configure_train(1, chosen, global_tensors(ctx))


def test_two_clients_of_one_budget_on_different_devices_get_different_allocations() -> None:
    clients = [ClientInfo(0, 10, BUDGET, cost_model=GPU), ClientInfo(1, 10, BUDGET, cost_model=CPU)]
    assignments = plan("fedpilot", clients)
    gpu, cpu = set(assignments[0].modules), set(assignments[1].modules)
    assert gpu == {"2.q", "2.v", "3.q", "3.v"} and cpu == set(MODULES)
    for client in clients:  # no violation: each plan fits its client's budget under the client's own model
        assert client.cost_model.cost(assignments[client.cid].modules) <= BUDGET
    assert GPU.cost(assignments[1].modules) > BUDGET, "the CPU client's plan would not fit a GPU: the own model decided"


@pytest.mark.parametrize("name", PRICED)
def test_each_strategy_plans_within_every_clients_own_cost_model(name: str) -> None:
    budgets = [BUDGET, BUDGET, 1000 + 800 + 8 * 40 + 10]
    clients = [ClientInfo(0, 10, budgets[0], cost_model=GPU), ClientInfo(1, 10, budgets[1], cost_model=CPU), ClientInfo(2, 10, budgets[2])]
    assignments = plan(name, clients)
    assert assignments, name
    for client in clients:
        if client.cid in assignments:
            a = assignments[client.cid]
            own = client.cost_model or GPU
            assert own.cost(a.modules, a.ranks) <= client.budget_bytes, (name, client.cid, a)


@pytest.mark.parametrize("name", [*PRICED, "fedpilot-additive"])
def test_without_own_cost_models_every_strategy_plans_as_before(name: str) -> None:
    """The simulator's clients carry no cost model: planning with the federation's (None) or handing each
    client that same model gives the same assignments."""
    budgets = [BUDGET, 1000 + 600 + 6 * 40 + 3, 1000 + 800 + 8 * 40 + 10]
    shared = [ClientInfo(cid, 10, b) for cid, b in enumerate(budgets)]
    own = [ClientInfo(cid, 10, b, cost_model=GPU) for cid, b in enumerate(budgets)]
    assert plan(name, shared) == plan(name, own)


def test_straggler_finds_one_set_every_device_affords() -> None:
    clients = [ClientInfo(0, 10, 1000 + 300 + 4 * 40, cost_model=CPU), ClientInfo(1, 10, 1000 + 300 + 4 * 40, cost_model=GPU)]
    common = plan("straggler", clients)[0].modules
    assert set(common) == {"2.q", "2.v", "3.q", "3.v"}
    assert all(c.cost_model.cost(common) <= c.budget_bytes for c in clients)


class EchoTransport:
    """Clients that answer every score and train task (a small step on what they train), except ``silent`` ones."""

    def __init__(self, ctx: FederationContext, silent: set[int] = frozenset()) -> None:
        self.ctx, self.silent, self.sent = ctx, silent, []

    def score(self, server_round, tasks):
        return [Failure(t.cid, "silent") if t.cid in self.silent else ClientScores(t.cid, {m: 1.0 for m in t.modules}, {"peak_bytes": 1}) for t in tasks]

    def train(self, server_round, tasks):
        self.sent.extend(tasks)
        replies = []
        for t in tasks:
            if t.cid in self.silent:
                replies.append(Failure(t.cid, "silent"))
                continue
            keys = self.ctx.reply_keys(t.assignment)
            replies.append(ClientUpdate(t.cid, 10, {k: t.tensors[k] + 0.01 for k in keys}, {"peak_bytes": 1}))
        return replies


def make_server(clients: list[ClientInfo], min_replies: int = 1, payload: str = "full") -> tuple[Server, FederationContext]:
    ctx = context()
    strategy = STRATEGIES["fedpilot"](ctx)
    server = Server(strategy, clients, global_tensors(ctx), TrainSettings(), seed=0, min_replies=min_replies, payload=payload)
    server.check_budgets()
    return server, ctx


def test_the_round_record_says_which_cost_model_planned_each_client() -> None:
    clients = [ClientInfo(0, 10, BUDGET, cost_model=GPU), ClientInfo(1, 10, BUDGET, cost_model=CPU), ClientInfo(2, 10, None)]
    server, ctx = make_server(clients)
    result = server.run_round(1, EchoTransport(ctx))
    records = {r["cid"]: r for r in result.clients}
    assert [records[c]["cost_model"] for c in (0, 1, 2)] == ["own", "own", "federation"]
    assert [records[c]["cost_model_device"] for c in (0, 1, 2)] == ["gpu", "cpu", "gpu"]
    assert records[0]["predicted_bytes"] == GPU.cost(records[0]["modules"]) <= BUDGET
    assert records[1]["predicted_bytes"] == CPU.cost(records[1]["modules"]) <= BUDGET


def test_a_round_with_fewer_valid_updates_than_min_replies_keeps_the_global_model() -> None:
    clients = [ClientInfo(cid, 10, None) for cid in range(3)]
    server, ctx = make_server(clients, min_replies=2)
    before = dict(server.global_tensors)
    result = server.run_round(1, EchoTransport(ctx, silent={0, 1}))
    assert result.skipped == "1 valid update(s), fewer than federation.min_replies=2"
    assert [f["cid"] for f in result.failures if f["phase"] == "training"] == [0, 1]
    assert all(server.global_tensors[k] is before[k] for k in before)
    result = server.run_round(2, EchoTransport(ctx, silent={0}))  # two answer: enough
    assert result.skipped is None and not np.array_equal(server.global_tensors["3.q/lora_A"], before["3.q/lora_A"])


def test_the_server_refuses_nonsense_min_replies_and_payload() -> None:
    with pytest.raises(ValueError, match="min_replies must be >= 1"):
        make_server([ClientInfo(0, 10)], min_replies=0)
    with pytest.raises(ValueError, match="payload must be one of"):
        make_server([ClientInfo(0, 10)], payload="some")


def test_an_assigned_payload_carries_the_assigned_modules_and_the_head_only() -> None:
    clients = [ClientInfo(0, 10, BUDGET, cost_model=GPU), ClientInfo(1, 10, None)]
    server, ctx = make_server(clients, payload="assigned")
    transport = EchoTransport(ctx)
    result = server.run_round(1, transport)
    for task in transport.sent:
        assert set(task.tensors) == {f"{m}/{p}" for m in task.assignment.modules for p in ("lora_A", "lora_B")} | {"head/w"}
        assert task.instructions.payload == "assigned"
    records = {r["cid"]: r for r in result.clients}
    assert records[0]["download_bytes"] == sum(t.tensors[k].nbytes for t in transport.sent if t.cid == 0 for k in t.tensors)
    assert records[0]["download_bytes"] < records[0]["download_bytes_full"] == records[1]["download_bytes_full"] == records[1]["download_bytes"]


def test_deployment_settings_are_checked_with_one_line() -> None:
    config = parse_config({"federation": {"round_timeout": 30, "min_replies": 2, "payload": "assigned"}})
    assert (config.federation.round_timeout, config.federation.min_replies, config.federation.payload) == (30.0, 2, "assigned")
    assert parse_config({}).federation.payload == "full" and parse_config({}).federation.min_replies == 1
    with pytest.raises(ConfigError, match=r"min_replies \(4\) exceeds the 3 clients a round samples"):
        parse_config({"federation": {"num_clients": 8, "clients_per_round": 3, "min_replies": 4}})
    with pytest.raises(ConfigError, match="federation.min_replies"):
        parse_config({"federation": {"min_replies": 0}})
    with pytest.raises(ConfigError, match="federation.round_timeout"):
        parse_config({"federation": {"round_timeout": -1}})
    with pytest.raises(ConfigError, match="federation.payload: assigned cannot carry strategy 'flora'"):
        parse_config({"strategy": "flora", "federation": {"payload": "assigned"}})


def test_a_node_whose_cost_model_describes_another_run_is_refused_with_one_line() -> None:
    from dataclasses import replace

    from fedpilot.core.errors import FedpilotError
    from fedpilot.flower.server_app import check_node_cost_model

    federation = replace(GPU, settings={"device": "gpu", "batch_size": 16, "seq_len": 64, "optimizer": "adamw"})
    check_node_cost_model(0, replace(CPU, settings={**federation.settings, "device": "cpu"}), federation)  # another device: fine
    with pytest.raises(FedpilotError, match=r"node of partition 1 calibrated with batch_size=8, the run's is 16"):
        check_node_cost_model(1, replace(CPU, settings={**federation.settings, "batch_size": 8}), federation)
    with pytest.raises(FedpilotError, match="reports a cost model of 2 modules over 4 layers"):
        check_node_cost_model(2, CostModel(1000, (1, 1, 1, 1), {"0.q": 1, "3.v": 1}, rank=RANK), federation)
    with pytest.raises(FedpilotError, match="calibrated at LoRA rank 8, the run's is 4"):
        check_node_cost_model(3, replace(CPU, rank=8), federation)
