"""The contracts between strategy, server, transport and client: per-client assignments with ranks
and trained parts, shape checks, selection in the strategy, budgets checked once, strategy state."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import numpy as np
import pytest

from fedpilot.config import Config
from fedpilot.core.errors import FedpilotError
from fedpilot.core.keys import LORA_B, rank_axis
from fedpilot.core.tensors import TensorDict
from fedpilot.federation import Federation, build_federation
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.server import Server
from fedpilot.runtime.validation import update_problem
from fedpilot.simulation import run_simulation
from fedpilot.strategies import STRATEGIES, Assignment, Capabilities, ClientInfo, ClientScores, ClientUpdate, FederationContext, Strategy
from fedpilot.strategies.aggregation_utils import sample_weighted_average


def truncate(tensors: TensorDict, ranks: dict[str, int]) -> TensorDict:
    """The global adapter with each ranked module cut to its rank (A: first rows, B: first columns)."""
    out = dict(tensors)
    for key, value in tensors.items():
        module, axis = key.split("/")[0], rank_axis(key)
        if module in ranks and axis is not None:
            out[key] = np.ascontiguousarray(value[:ranks[module]] if axis == 0 else value[:, :ranks[module]])
    return out


def zero_pad(tensors: TensorDict, shapes: dict[str, tuple[int, ...]]) -> TensorDict:
    out = {}
    for key, value in tensors.items():
        padded = np.zeros(shapes[key], dtype=value.dtype)
        padded[tuple(slice(0, n) for n in value.shape)] = value
        out[key] = padded
    return out


class RankedAverage(Strategy):
    """Test strategy: some clients train every module at a lower rank; the server zero-pads and averages."""

    capabilities = Capabilities(memory_aware=False, per_client_assignment=False, rank_heterogeneous=True)

    def __init__(self, context: FederationContext, low: dict[int, int], parts: tuple[str, ...] = ("lora_A", "lora_B"), send_truncated: bool = True) -> None:
        super().__init__(context)
        self.low, self.parts, self.send_truncated = low, parts, send_truncated
        self.seen: list[ClientUpdate] = []

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        plan = {}
        for c in clients:
            ranks = {m: self.low[c.cid] for m in self.context.modules} if c.cid in self.low else {}
            tensors = truncate(global_tensors, ranks) if ranks and self.send_truncated else None
            plan[c.cid] = Assignment(tuple(self.context.modules), ranks, self.parts, tensors)
        return plan

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        self.seen = list(updates)
        padded = [ClientUpdate(u.cid, u.num_samples, zero_pad(u.tensors, dict(self.context.shapes)), u.metrics) for u in updates]
        return sample_weighted_average(global_tensors, padded)


@pytest.fixture(scope="module")
def federation(fast_config: Config) -> Federation:
    config = fast_config.model_copy(update={"strategy": "fedavg", "federation": fast_config.federation.model_copy(update={"budgets": None})})
    return build_federation(config, progress=False)


def server_with(federation: Federation, strategy: Strategy, config: Config) -> Server:
    initial = {k: v.copy() for k, v in federation.server.global_tensors.items()}  # never trained: the fixture server runs no round
    return Server(strategy, federation.infos, initial, config.train, config.seed, federation.server.evaluator)


def test_two_ranks_round_trip_through_a_real_round(federation: Federation, fast_config: Config) -> None:
    context = federation.server.context
    strategy = RankedAverage(context, low={0: 4})
    server = server_with(federation, strategy, fast_config)
    before = {k: v.copy() for k, v in server.global_tensors.items()}

    result = server.run_round(1, federation.transport())

    assert result.rejected == [] and result.skipped is None
    by_cid = {r["cid"]: r for r in result.clients}
    assert by_cid[0]["ranks"] == {m: 4 for m in context.modules} and "ranks" not in by_cid[1]
    sent = {u.cid: u.tensors for u in strategy.seen}
    assert sent[0]["0.query/lora_A"].shape == (4, 32) and sent[0]["0.query/lora_B"].shape == (32, 4)
    assert sent[1]["0.query/lora_A"].shape == (8, 32)
    assert by_cid[0]["upload_bytes"] < by_cid[1]["upload_bytes"]
    # the cost model prices rank: less for the rank-4 client, and close to what was measured
    assert by_cid[0]["predicted_bytes"] < by_cid[1]["predicted_bytes"]
    assert abs(by_cid[0]["predicted_bytes"] - by_cid[0]["peak_bytes"]) <= 0.05 * by_cid[0]["peak_bytes"]
    # the new global adapter is exactly the sample-weighted mean of the zero-padded updates
    total = sum(u.num_samples for u in strategy.seen)
    for key, value in server.global_tensors.items():
        assert value.shape == before[key].shape
        expected = sum(zero_pad({key: u.tensors[key]}, dict(context.shapes))[key].astype(np.float64) * (u.num_samples / total) for u in strategy.seen)
        np.testing.assert_array_equal(value, expected.astype(np.float32))
    # the rank-4 client's rows beyond its rank came back as zeros and pulled the mean toward zero
    assert np.all(sent[0]["0.query/lora_A"].shape[0] < value.shape[0] for value in [server.global_tensors["0.query/lora_A"]])


def test_a_payload_of_the_wrong_rank_is_refused_by_the_client(federation: Federation, fast_config: Config) -> None:
    strategy = RankedAverage(federation.server.context, low={0: 4}, send_truncated=False)
    server = server_with(federation, strategy, fast_config)
    with pytest.raises(ValueError, match=r"0.query/lora_A: received shape \(8, 32\), the model holds \(4, 32\)"):
        server.run_round(1, federation.transport())


def test_a_b_only_assignment_trains_and_aggregates_b_only(federation: Federation, fast_config: Config) -> None:
    strategy = RankedAverage(federation.server.context, low={}, parts=(LORA_B,))
    server = server_with(federation, strategy, fast_config)
    before = {k: v.copy() for k, v in server.global_tensors.items()}

    result = server.run_round(1, federation.transport())

    assert result.rejected == [] and all(r["parts"] == ["lora_B"] for r in result.clients)
    for update in strategy.seen:
        assert all(k.endswith("/lora_B") or k.startswith("head/") for k in update.tensors)
    for key, value in server.global_tensors.items():
        if key.endswith("/lora_A"):
            np.testing.assert_array_equal(value, before[key])
        else:
            assert not np.array_equal(value, before[key]), key


def test_validation_names_what_is_wrong_with_an_update(federation: Federation) -> None:
    context = federation.server.context
    global_tensors = federation.server.global_tensors
    assignment = Assignment(("3.query",), ranks={"3.query": 2})
    good = {k: global_tensors[k] for k in context.head_keys}
    good["3.query/lora_A"] = np.zeros((2, 32), np.float32)
    good["3.query/lora_B"] = np.zeros((32, 2), np.float32)
    assert update_problem(context, assignment, good, global_tensors, 10) is None
    cases = {
        "sent 1 tensors it was not assigned, e.g. '2.query/lora_A'": {**good, "2.query/lora_A": global_tensors["2.query/lora_A"]},
        "lacks 1 assigned tensors, e.g. '3.query/lora_B'": {k: v for k, v in good.items() if k != "3.query/lora_B"},
        "3.query/lora_A: shape (8, 32), assigned (2, 32)": {**good, "3.query/lora_A": np.zeros((8, 32), np.float32)},
        "3.query/lora_B: dtype float64, expected float32": {**good, "3.query/lora_B": np.zeros((32, 2))},
        "3.query/lora_A: holds NaN or Inf": {**good, "3.query/lora_A": np.full((2, 32), np.nan, np.float32)},
    }
    for reason, tensors in cases.items():
        assert update_problem(context, assignment, tensors, global_tensors, 10) == reason
    assert update_problem(context, assignment, good, global_tensors, 0) == "num_samples is 0; it must be positive"


def test_assignments_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="non-empty subset"):
        Assignment(("0.query",), parts=("lora_C",))
    with pytest.raises(ValueError, match="ranks to modules it does not train"):
        Assignment(("0.query",), ranks={"1.query": 2})


def test_exclusive_under_partial_participation_samples_among_the_eligible(fast_config: Config, fast_cost_model: CostModel, tmp_path) -> None:
    big = int(fast_cost_model.full() * 1.2)
    small = int(fast_cost_model.cheapest()[1] * 1.05)
    federation = fast_config.federation.model_copy(
        update={"num_clients": 8, "clients_per_round": 4, "rounds": 5, "budgets": (small,) * 6 + (big,) * 2}
    )
    config = fast_config.model_copy(update={
        "strategy": "exclusive", "federation": federation,
        "train": fast_config.train.model_copy(update={"local_steps": 1}),
    })
    result = run_simulation(config, tmp_path / "run", progress=False)
    assert result.results["status"] == "finished" and len(result.rounds) == 6
    for record in result.rounds[1:]:
        assert sorted(c["cid"] for c in record["clients"]) == [6, 7] == record["selected"]
        assert record["skipped"] is None


def test_exclusive_refuses_a_federation_where_nobody_fits(fast_config: Config, fast_cost_model: CostModel) -> None:
    strategy = STRATEGIES["exclusive"](FederationContext([], {}, {}, 6, 8, fast_cost_model, memory_margin=0.01))
    with pytest.raises(FedpilotError, match="no client does"):
        strategy.check_budgets([ClientInfo(0, 10, fast_cost_model.full())])  # the margin leaves it short


def synthetic_context(seed: int, margin: float) -> FederationContext:
    rng = random.Random(seed)
    layers, targets = 4, ("q", "v", "f")
    modules = [f"{l}.{t}" for l in range(layers) for t in targets]
    cost_model = CostModel(
        fixed=1000, activation=tuple(sorted((rng.randint(0, 500) for _ in range(layers)), reverse=True)),
        module={m: rng.randint(1, 80) for m in modules},
    )
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in modules} | {"head": ["head/w"]}
    shapes = {k: (2, 3) for ks in keys.values() for k in ks}
    return FederationContext(modules, keys, shapes, layers, 2, cost_model, memory_margin=margin)


@pytest.mark.parametrize("name", ["fedpilot", "fedpilot-noig", "fedpilot-nostagg", "fedpilot-additive"])
def test_a_budget_that_passes_the_start_up_check_never_aborts_a_round(name: str) -> None:
    for seed in range(40):
        context = synthetic_context(seed, margin=random.Random(seed).choice([0.0, 0.01, 0.2]))
        cheapest = context.cost_model.cheapest()[1]
        rng = random.Random(seed)
        budgets = [rng.randint(cheapest - 5, int(cheapest / (1 - context.memory_margin)) + 5) for _ in range(6)]
        clients = [ClientInfo(cid, 10, b) for cid, b in enumerate(budgets)]
        strategy = STRATEGIES[name](context)
        for client in clients:
            try:
                strategy.check_budgets([client])
                passed = True
            except FedpilotError:
                passed = False
            for server_round in (1, 2, 3):
                strategy.aggregate_score(server_round, [ClientScores(client.cid, {m: rng.random() for m in context.modules})])
                if passed:
                    assignment = strategy.configure_train(server_round, [client], {})[client.cid]
                    assert context.cost_model.cost(assignment.modules) <= context.usable(client.budget_bytes) or name == "fedpilot-additive"
                else:
                    with pytest.raises(FedpilotError):
                        strategy.configure_train(server_round, [client], {})


def test_strategy_state_round_trips_and_decides_the_same() -> None:
    context = synthetic_context(3, margin=0.0)
    rng = np.random.default_rng(0)

    def random_updates(keys: list[str]) -> list[ClientUpdate]:
        return [ClientUpdate(cid, 5 + cid, {k: rng.standard_normal((2, 3)).astype(np.float32) for k in keys}) for cid in range(3)]

    tensors = {k: np.zeros((2, 3), np.float32) for ks in context.module_keys.values() for k in ks}
    first = STRATEGIES["fedpilot"](context)
    for server_round in (1, 2, 3):
        first.aggregate_score(server_round, [ClientScores(0, {m: float(rng.random()) for m in context.modules})])
        keys = [k for m in context.modules[: 4 * server_round] for k in context.module_keys[m]] + ["head/w"]
        tensors = first.aggregate_train(server_round, tensors, random_updates(keys))
    state = first.state_dict()
    arrays = state["compensation"]["history"]
    assert arrays and all(isinstance(v, np.ndarray) for v in arrays.values())
    json.dumps({**state, "compensation": {**state["compensation"], "history": {}}})  # the rest is JSON
    second = STRATEGIES["fedpilot"](context)
    second.load_state_dict(state)
    updates = random_updates([k for ks in context.module_keys.values() for k in ks])
    a, b = first.aggregate_train(4, tensors, updates), second.aggregate_train(4, tensors, updates)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    budget = [ClientInfo(0, 10, context.cost_model.full() // 2 + 500)]
    assert first.configure_train(5, budget, a) == second.configure_train(5, budget, b)
    with pytest.raises(ValueError, match="keeps no state"):
        STRATEGIES["fedavg"](context).load_state_dict({"x": 1})


class NobodyTrains(Strategy):
    capabilities = Capabilities(memory_aware=False, per_client_assignment=False, rank_heterogeneous=False)

    def configure_train(self, server_round, clients, global_tensors):
        return {}

    def aggregate_train(self, server_round, global_tensors, updates):
        raise AssertionError("never called without updates")


def test_a_round_with_nothing_to_train_is_skipped_and_recorded(federation: Federation, fast_config: Config) -> None:
    server = server_with(federation, NobodyTrains(federation.server.context), fast_config)
    server.evaluate()
    before = dict(server.global_tensors)
    result = server.run_round(1, federation.transport())
    assert result.skipped == "no sampled client was assigned work" and result.clients == []
    assert server.global_tensors == before and result.metrics == server.last_metrics


class EmptyAssignments(Strategy):
    capabilities = Capabilities(memory_aware=False, per_client_assignment=False, rank_heterogeneous=False)

    def configure_train(self, server_round, clients, global_tensors):
        return {c.cid: Assignment(()) for c in clients}

    def aggregate_train(self, server_round, global_tensors, updates):
        return global_tensors


def test_an_assignment_that_trains_nothing_is_refused_for_a_model_without_a_head() -> None:
    from fedpilot.config import TrainSettings

    headless = synthetic_context(0, margin=0.0)
    headless = FederationContext(headless.modules, {m: k for m, k in headless.module_keys.items() if m != "head"},
                                 {k: v for k, v in headless.shapes.items() if not k.startswith("head/")}, 4, 2, headless.cost_model)
    server = Server(EmptyAssignments(headless), [ClientInfo(0, 10)], {}, TrainSettings(), seed=0)
    with pytest.raises(ValueError, match="client 0 trains nothing: no modules, and the model has no task head"):
        server.plan_round(1, transport=None)
    with_head = synthetic_context(0, margin=0.0)  # with a head, an empty assignment trains the head alone
    assert Server(EmptyAssignments(with_head), [ClientInfo(0, 10)], {}, TrainSettings(), seed=0).plan_round(1, None).assignments[0].modules == ()
