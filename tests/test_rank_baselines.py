"""The rank baselines' defining rules, exactly: FFA-LoRA (A frozen, B averaged), HetLoRA (budget
ranks, truncation, zero-padding, self-pruning, sparsity weights) and FlexLoRA (average of products,
truncated-SVD redistribution); mostly numpy on synthetic contexts, then one real round each."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedpilot.config import Config
from fedpilot.core.errors import FedpilotError
from fedpilot.federation import Federation, build_federation
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.server import Server
from fedpilot.strategies import STRATEGIES, ClientInfo, ClientUpdate, FederationContext
from fedpilot.strategies.rank_utils import (
    average_products,
    best_rank_factors,
    largest_fitting_rank,
    truncate,
    truncate_adapter,
    zero_pad,
)


def context(d_out: int = 5, d_in: int = 6, rank: int = 4, per_rank: bool = True, clients_per_round: int | None = None) -> FederationContext:
    """Two layers x two targets; full depth costs 1000 + 300 + 4 * (80 + (r - 4) * 10) = 1620 + 40 (r - 4)."""
    modules = ["0.q", "0.v", "1.q", "1.v"]
    cost_model = CostModel(
        fixed=1000, activation=(300, 100), module={m: 80 for m in modules},
        rank=rank if per_rank else None, rank_bytes={m: 10 for m in modules} if per_rank else {},
    )
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in modules} | {"head": ["head/w"]}
    shapes = {f"{m}/lora_A": (rank, d_in) for m in modules} | {f"{m}/lora_B": (d_out, rank) for m in modules} | {"head/w": (3, d_out)}
    return FederationContext(modules, keys, shapes, 2, rank, cost_model, memory_margin=0.0, clients_per_round=clients_per_round)


def random_adapter(ctx: FederationContext, seed: int, zero_b: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: rng.standard_normal(s).astype(np.float32) for k, s in ctx.shapes.items()}
    if zero_b:
        out |= {k: np.zeros(s, np.float32) for k, s in ctx.shapes.items() if k.endswith("/lora_B")}
    return out


def update_at(ctx: FederationContext, cid: int, n: int, rank: int, seed: int, modules=None) -> ClientUpdate:
    full = random_adapter(ctx, seed)
    chosen = ctx.modules if modules is None else modules
    tensors = {k: v for k, v in full.items() if k == "head/w" or k.split("/")[0] in chosen}
    return ClientUpdate(cid, n, truncate_adapter(tensors, {m: rank for m in chosen}))


# -- rank_utils -----------------------------------------------------------------------------------------


def test_truncate_and_zero_pad_are_exact_inverses_on_the_product() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((5, 4))
    a2, b2 = truncate("0.q/lora_A", a, 2), truncate("0.q/lora_B", b, 2)
    np.testing.assert_array_equal(a2, a[:2])
    np.testing.assert_array_equal(b2, b[:, :2])
    pa, pb = zero_pad("0.q/lora_A", a2, (4, 6)), zero_pad("0.q/lora_B", b2, (5, 4))
    assert not pa[2:].any() and not pb[:, 2:].any()
    np.testing.assert_array_equal(pb @ pa, b2 @ a2)
    with pytest.raises(ValueError, match="cannot truncate rank 4 to 5"):
        truncate("0.q/lora_A", a, 5)
    with pytest.raises(ValueError, match="only the rank axis may grow"):
        zero_pad("0.q/lora_A", a2, (4, 7))
    with pytest.raises(ValueError, match="only the rank axis may grow"):
        zero_pad("0.q/lora_B", b, (5, 2))


def test_best_rank_factors_are_the_truncated_svd_split_evenly() -> None:
    w = np.random.default_rng(1).standard_normal((7, 9))
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    for r in (1, 3, 7):
        b, a = best_rank_factors(w, r)
        assert b.shape == (7, r) and a.shape == (r, 9)
        np.testing.assert_allclose(b @ a, (u[:, :r] * s[:r]) @ vt[:r], atol=1e-12)
        np.testing.assert_allclose(b.T @ b, np.diag(s[:r]), atol=1e-12)  # B = U_r sqrt(S_r)
        np.testing.assert_allclose(a @ a.T, np.diag(s[:r]), atol=1e-12)  # A = sqrt(S_r) V_r^T
        assert math.isclose(np.linalg.norm(w - b @ a), math.sqrt(np.sum(s[r:] ** 2)), rel_tol=1e-9, abs_tol=1e-12)  # Eckart-Young
    with pytest.raises(ValueError, match="cannot factorise at rank 8"):
        best_rank_factors(w, 8)


def test_average_of_products_is_exact() -> None:
    rng = np.random.default_rng(2)
    pairs = [(rng.standard_normal((5, r)).astype(np.float32), rng.standard_normal((r, 6)).astype(np.float32)) for r in (4, 2, 1)]
    n = [10, 30, 5]
    reference = sum(k * (b.astype(np.float64) @ a.astype(np.float64)) for k, (b, a) in zip(n, pairs)) / sum(n)
    np.testing.assert_allclose(average_products(pairs, n), reference, rtol=1e-13, atol=1e-13)


def test_the_largest_rank_that_fits_full_depth() -> None:
    cm = context().cost_model
    modules = list(cm.module)
    assert [largest_fitting_rank(cm, modules, 4, room) for room in (None, 10**9, 1620, 1619, 1580, 1540, 1500)] == [4, 4, 4, 3, 3, 2, 1]
    assert largest_fitting_rank(cm, modules, 4, 1499) is None
    flat = context(per_rank=False).cost_model  # no per-rank term: only the global rank can be priced
    assert largest_fitting_rank(flat, modules, 4, 1620) == 4 and largest_fitting_rank(flat, modules, 4, 1619) is None


def test_the_three_are_registered_with_their_memory_awareness() -> None:
    assert {"ffa-lora", "hetlora", "flexlora"} <= set(STRATEGIES)
    assert not STRATEGIES["ffa-lora"].capabilities.memory_aware
    assert STRATEGIES["hetlora"].capabilities.memory_aware and STRATEGIES["flexlora"].capabilities.memory_aware
    with pytest.raises(ValueError, match="unknown key 'gamma'"):
        STRATEGIES["hetlora"].Options.model_validate({"gamma": 0.5})


# -- FFA-LoRA -------------------------------------------------------------------------------------------


def test_ffa_lora_assigns_b_only_and_never_changes_a() -> None:
    ctx = context()
    strategy = STRATEGIES["ffa-lora"](ctx)
    clients = [ClientInfo(0, 10, 1), ClientInfo(1, 30, None)]  # budgets ignored: memory-unaware
    plan = strategy.configure_train(1, clients, {})
    for assignment in plan.values():
        assert assignment.modules == tuple(ctx.modules) and assignment.parts == ("lora_B",)
        assert dict(assignment.ranks) == {} and assignment.tensors is None
        assert ctx.reply_keys(assignment) == [f"{m}/lora_B" for m in ctx.modules] + ["head/w"]
    global_tensors = random_adapter(ctx, 0)
    before = {k: v.copy() for k, v in global_tensors.items()}
    updates = []
    for cid, n in ((0, 10), (1, 30)):
        sent = random_adapter(ctx, 10 + cid)
        updates.append(ClientUpdate(cid, n, {k: v for k, v in sent.items() if not k.endswith("/lora_A")}))
    result = strategy.aggregate_train(1, global_tensors, updates)
    for key, value in result.items():
        if key.endswith("/lora_A"):
            assert value.dtype == before[key].dtype and value.tobytes() == before[key].tobytes()
        else:
            expected = (10 * updates[0].tensors[key].astype(np.float64) + 30 * updates[1].tensors[key].astype(np.float64)) / 40
            np.testing.assert_allclose(result[key], expected, rtol=1e-6)
    bad = ClientUpdate(2, 5, {**updates[0].tensors, "0.q/lora_A": before["0.q/lora_A"]})
    with pytest.raises(ValueError, match="sent frozen lora_A"):
        strategy.aggregate_train(1, global_tensors, [bad])


# -- HetLoRA --------------------------------------------------------------------------------------------


def test_hetlora_gives_each_client_the_largest_rank_that_fits_and_truncates_for_it() -> None:
    ctx = context()
    strategy = STRATEGIES["hetlora"](ctx)
    clients = [ClientInfo(0, 10, None), ClientInfo(1, 10, 1580), ClientInfo(2, 10, 1540), ClientInfo(3, 10, 1499)]
    global_tensors = random_adapter(ctx, 3)
    plan = strategy.configure_train(1, clients, global_tensors)
    assert sorted(plan) == [0, 1, 2]  # client 3 fits no rank: it sits out
    assert dict(plan[0].ranks) == {} and plan[0].tensors is None
    for cid, rank in ((1, 3), (2, 2)):
        assignment = plan[cid]
        assert assignment.modules == tuple(ctx.modules) and dict(assignment.ranks) == {m: rank for m in ctx.modules}
        assert ctx.cost_model.cost(assignment.modules, assignment.ranks) <= clients[cid].budget_bytes
        payload = assignment.tensors
        assert set(payload) == set(global_tensors)
        for m in ctx.modules:
            np.testing.assert_array_equal(payload[f"{m}/lora_A"], global_tensors[f"{m}/lora_A"][:rank])
            np.testing.assert_array_equal(payload[f"{m}/lora_B"], global_tensors[f"{m}/lora_B"][:, :rank])
        np.testing.assert_array_equal(payload["head/w"], global_tensors["head/w"])


def test_hetlora_refuses_only_a_federation_where_nobody_fits_and_samples_among_those_who_do() -> None:
    ctx = context(clients_per_round=2)
    strategy = STRATEGIES["hetlora"](ctx)
    with pytest.raises(FedpilotError, match=r"^federation.budgets: hetlora .* even at rank 1 \(0.0 MiB") as error:
        strategy.check_budgets([ClientInfo(0, 10, 1499), ClientInfo(1, 10, 900)])
    assert "\n" not in str(error.value)
    clients = [ClientInfo(0, 10, 1499), ClientInfo(1, 10, 1500), ClientInfo(2, 10, 900), ClientInfo(3, 10, None)]
    strategy.check_budgets(clients)
    for server_round in range(1, 6):
        assert [c.cid for c in strategy.sample(server_round, clients)] == [1, 3]


def hand_context() -> FederationContext:
    cost_model = CostModel(fixed=0, activation=(0,), module={"0.q": 1, "0.v": 1}, rank=2, rank_bytes={"0.q": 0, "0.v": 0})
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in ("0.q", "0.v")} | {"head": ["head/w"]}
    shapes = {"0.q/lora_A": (2, 2), "0.q/lora_B": (2, 2), "0.v/lora_A": (2, 2), "0.v/lora_B": (2, 2), "head/w": (1, 2)}
    return FederationContext(["0.q", "0.v"], keys, shapes, 1, 2, cost_model)


def f32(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_hetlora_zero_pads_and_weights_by_the_product_norm_per_module() -> None:
    ctx = hand_context()
    strategy = STRATEGIES["hetlora"](ctx)
    global_tensors = {k: np.full(s, 7, np.float32) for k, s in ctx.shapes.items()}
    # client 1, rank 1: B A = [[3, 0], [4, 0]], ||.||_F = 5; client 2, rank 2: B A = [[0, 10], [0, 0]], ||.||_F = 10
    one = ClientUpdate(1, 1, {"0.q/lora_A": f32([[1, 0]]), "0.q/lora_B": f32([[3], [4]]),
                              "0.v/lora_A": f32([[2, 2]]), "0.v/lora_B": f32([[1], [0]]), "head/w": f32([[4, 0]])})
    two = ClientUpdate(2, 3, {"0.q/lora_A": f32([[1, 0], [0, 1]]), "0.q/lora_B": f32([[0, 10], [0, 0]]), "head/w": f32([[0, 8]])})
    result = strategy.aggregate_train(1, global_tensors, [one, two])
    # 0.q: p = (5/15, 10/15); A = 1/3 pad(A1) + 2/3 A2, B = 1/3 pad(B1) + 2/3 B2
    np.testing.assert_allclose(result["0.q/lora_A"], [[1, 0], [0, 2 / 3]], rtol=1e-6)
    np.testing.assert_allclose(result["0.q/lora_B"], [[1, 20 / 3], [4 / 3, 0]], rtol=1e-6)
    # 0.v: only client 1 trained it, so its weight is 1 and the padded rank component is zero
    np.testing.assert_array_equal(result["0.v/lora_A"], [[2, 2], [0, 0]])
    np.testing.assert_array_equal(result["0.v/lora_B"], [[1, 0], [0, 0]])
    np.testing.assert_allclose(result["head/w"], [[1, 6]], rtol=1e-6)  # sample-weighted: (1 * h1 + 3 * h2) / 4
    # all products zero: the weights fall back to the sample counts
    zero_one = ClientUpdate(1, 1, {**one.tensors, "0.q/lora_B": f32([[0], [0]])})
    zero_two = ClientUpdate(2, 3, {**two.tensors, "0.q/lora_B": f32([[0, 0], [0, 0]])})
    np.testing.assert_allclose(strategy.aggregate_train(2, global_tensors, [zero_one, zero_two])["0.q/lora_A"], [[1, 0], [0, 0.75]], rtol=1e-6)


def test_hetlora_self_prunes_a_client_whose_tail_carries_little_and_remembers_it() -> None:
    ctx = hand_context()
    # r = 2, decay 0.99: r' = floor(1.98) = 1, the tail is rank component 1.
    # 0.q: B A = [[10, 0.5], [0, 0]], tail [[0, 0.5], [0, 0]]; 0.v: B A = [[0, 1], [0, 0]] = its tail
    # share = sqrt((0.25 + 1) / (100.25 + 1)) = 0.1111
    tensors = {"0.q/lora_A": f32([[1, 0], [0, 1]]), "0.q/lora_B": f32([[10, 0.5], [0, 0]]),
               "0.v/lora_A": f32([[1, 0], [0, 1]]), "0.v/lora_B": f32([[0, 1], [0, 0]]), "head/w": f32([[0, 0]])}
    share = math.sqrt(1.25 / 101.25)
    global_tensors = {k: np.zeros(s, np.float32) for k, s in ctx.shapes.items()}
    kept = STRATEGIES["hetlora"](ctx, STRATEGIES["hetlora"].Options(prune_threshold=share - 1e-4))
    kept.aggregate_train(1, global_tensors, [ClientUpdate(5, 4, tensors)])
    assert kept.caps == {} and kept.state_dict() == {"ranks": {}}
    pruned = STRATEGIES["hetlora"](ctx, STRATEGIES["hetlora"].Options(prune_threshold=share + 1e-4))
    pruned.aggregate_train(1, global_tensors, [ClientUpdate(5, 4, tensors)])
    assert pruned.caps == {5: 1}
    client = ClientInfo(5, 4, None)  # no budget limit: only the pruned cap lowers its rank
    assert dict(pruned.configure_train(2, [client], global_tensors)[5].ranks) == {"0.q": 1, "0.v": 1}
    state = json.loads(json.dumps(pruned.state_dict()))
    assert state == {"ranks": {"5": 1}}
    restored = STRATEGIES["hetlora"](ctx)
    restored.load_state_dict(state)
    again, before = restored.configure_train(2, [client], global_tensors)[5], pruned.configure_train(2, [client], global_tensors)[5]
    assert dict(again.ranks) == dict(before.ranks) and all(np.array_equal(again.tensors[k], before.tensors[k]) for k in before.tensors)
    # a rank-1 client has nothing left to prune
    rank_one = truncate_adapter(tensors, {"0.q": 1, "0.v": 1})
    pruned.aggregate_train(2, global_tensors, [ClientUpdate(5, 4, rank_one)])
    assert pruned.caps == {5: 1}
    with pytest.raises(ValueError, match="must lie in 1..2"):
        restored.load_state_dict({"ranks": {"1": 3}})


# -- FlexLoRA -------------------------------------------------------------------------------------------


def test_flexlora_averages_products_and_keeps_the_best_rank_r_factorisation() -> None:
    ctx = context()
    strategy = STRATEGIES["flexlora"](ctx)
    global_tensors = random_adapter(ctx, 4)
    updates = [update_at(ctx, 0, 10, 4, 20), update_at(ctx, 1, 30, 2, 21), update_at(ctx, 2, 5, 1, 22, modules=["0.q", "0.v", "1.q"])]
    result = strategy.aggregate_train(1, global_tensors, updates)
    for m in ctx.modules:
        senders = [u for u in updates if f"{m}/lora_A" in u.tensors]
        n = sum(u.num_samples for u in senders)
        w = sum(u.num_samples * (u.tensors[f"{m}/lora_B"].astype(np.float64) @ u.tensors[f"{m}/lora_A"].astype(np.float64)) for u in senders) / n
        np.testing.assert_allclose(strategy.average_product(m, updates), w, rtol=1e-13, atol=1e-13)
        u_, s, vt = np.linalg.svd(w, full_matrices=False)
        assert s[4] > 1e-3  # the average has rank 5 > R = 4: truncation loses something
        b, a = result[f"{m}/lora_B"].astype(np.float64), result[f"{m}/lora_A"].astype(np.float64)
        assert a.shape == (4, 6) and b.shape == (5, 4) and result[f"{m}/lora_A"].dtype == np.float32
        np.testing.assert_allclose(b @ a, (u_[:, :4] * s[:4]) @ vt[:4], atol=1e-5)
        assert math.isclose(np.linalg.norm(w - b @ a), math.sqrt(np.sum(s[4:] ** 2)), rel_tol=1e-4)
    for key in ("1.v/lora_A", "1.v/lora_B"):  # 1.v: client 2 did not train it, the others did
        assert key in updates[0].tensors and key not in updates[2].tensors
    head = (10 * updates[0].tensors["head/w"].astype(np.float64) + 30 * updates[1].tensors["head/w"] + 5 * updates[2].tensors["head/w"]) / 45
    np.testing.assert_allclose(result["head/w"], head, rtol=1e-5)
    untouched = strategy.aggregate_train(2, global_tensors, [update_at(ctx, 0, 10, 2, 23, modules=["0.q"])])
    for m in ("0.v", "1.q", "1.v"):  # nobody trained them: bit-identical
        for part in ("lora_A", "lora_B"):
            assert untouched[f"{m}/{part}"].tobytes() == global_tensors[f"{m}/{part}"].tobytes()


def test_flexlora_redistributes_the_truncated_svd_at_each_clients_rank() -> None:
    ctx = context()
    strategy = STRATEGIES["flexlora"](ctx)
    updates = [update_at(ctx, 0, 10, 4, 30), update_at(ctx, 1, 30, 2, 31)]
    global_tensors = strategy.aggregate_train(1, random_adapter(ctx, 5), updates)
    clients = [ClientInfo(0, 10, None), ClientInfo(1, 30, 1540), ClientInfo(2, 5, 1499)]
    plan = strategy.configure_train(2, clients, global_tensors)
    assert sorted(plan) == [0, 1] and plan[0].tensors is None and dict(plan[0].ranks) == {}
    payload = plan[1].tensors
    assert dict(plan[1].ranks) == {m: 2 for m in ctx.modules} and set(payload) == set(global_tensors)
    for m in ctx.modules:
        w = strategy.average_product(m, updates)
        g = global_tensors[f"{m}/lora_B"].astype(np.float64) @ global_tensors[f"{m}/lora_A"].astype(np.float64)
        u_, s, vt = np.linalg.svd(g, full_matrices=False)
        b, a = payload[f"{m}/lora_B"].astype(np.float64), payload[f"{m}/lora_A"].astype(np.float64)
        assert a.shape == (2, 6) and b.shape == (5, 2)
        np.testing.assert_allclose(b @ a, (u_[:, :2] * s[:2]) @ vt[:2], atol=1e-5)
        np.testing.assert_allclose(b.T @ b, np.diag(s[:2]), atol=1e-4)
        np.testing.assert_allclose(a @ a.T, np.diag(s[:2]), atol=1e-4)
        assert math.isclose(np.linalg.norm(g - b @ a), math.sqrt(np.sum(s[2:] ** 2)), rel_tol=1e-4)
        # the leading rank-2 part of the global product is that of W_m itself
        uw, sw, vwt = np.linalg.svd(w, full_matrices=False)
        np.testing.assert_allclose(b @ a, (uw[:, :2] * sw[:2]) @ vwt[:2], atol=1e-4)
    np.testing.assert_array_equal(payload["head/w"], global_tensors["head/w"])


def test_flexlora_keeps_the_lora_initialisation_while_a_product_is_zero() -> None:
    ctx = context()
    strategy = STRATEGIES["flexlora"](ctx)
    initial = random_adapter(ctx, 6, zero_b=True)  # random A, zero B: every product is zero
    payload = strategy.configure_train(1, [ClientInfo(0, 10, 1500)], initial)[0].tensors
    for m in ctx.modules:
        np.testing.assert_array_equal(payload[f"{m}/lora_A"], initial[f"{m}/lora_A"][:1])
        np.testing.assert_array_equal(payload[f"{m}/lora_B"], np.zeros((5, 1), np.float32))


def test_flexlora_refuses_only_a_federation_where_nobody_fits() -> None:
    strategy = STRATEGIES["flexlora"](context())
    with pytest.raises(FedpilotError, match="flexlora trains every LoRA module"):
        strategy.check_budgets([ClientInfo(0, 10, 1499)])
    strategy.check_budgets([ClientInfo(0, 10, 1499), ClientInfo(1, 10, 1500)])


# -- one real round -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(fast_config: Config) -> Federation:
    config = fast_config.model_copy(update={"strategy": "fedavg", "federation": fast_config.federation.model_copy(update={"budgets": None})})
    return build_federation(config, progress=False)


def test_a_real_flexlora_round_with_two_ranks_passes_validation_and_keeps_the_global_shapes(federation: Federation, fast_config: Config) -> None:
    ctx = federation.server.context
    modules = list(ctx.modules)
    low = ctx.cost_model.cost(modules, {m: 4 for m in modules})
    budget = math.ceil(low / (1 - ctx.memory_margin)) + 1  # fits rank 4, not rank 5
    infos = [ClientInfo(c.cid, c.num_samples, budget if c.cid == 0 else None) for c in federation.infos]
    seen: list[ClientUpdate] = []

    class Recording(STRATEGIES["flexlora"]):
        def aggregate_train(self, server_round, global_tensors, updates):
            seen.extend(updates)
            return super().aggregate_train(server_round, global_tensors, updates)

    strategy = Recording(ctx)
    initial = {k: v.copy() for k, v in federation.server.global_tensors.items()}
    server = Server(strategy, infos, initial, fast_config.train, fast_config.seed, federation.server.evaluator)
    server.check_budgets()
    before = {k: v.copy() for k, v in server.global_tensors.items()}

    result = server.run_round(1, federation.transport())  # round 1: zero products, so the rank-4 payload is the truncated init

    assert result.rejected == [] and result.failures == [] and result.skipped is None
    by_cid = {r["cid"]: r for r in result.clients}
    assert sorted(by_cid) == [c.cid for c in infos]
    assert by_cid[0]["ranks"] == {m: 4 for m in modules} and all("ranks" not in by_cid[c] for c in by_cid if c != 0)
    assert by_cid[0]["predicted_bytes"] <= ctx.usable(budget)
    sent = {u.cid: u.tensors for u in seen}
    assert sent[0]["0.query/lora_A"].shape == (4, 32) and sent[1]["0.query/lora_A"].shape == (8, 32)
    for key, value in server.global_tensors.items():
        assert value.shape == before[key].shape and value.dtype == before[key].dtype and np.isfinite(value).all()
    key_a, key_b = "3.value/lora_A", "3.value/lora_B"  # the best rank-8 approximation of the sample-weighted mean of the products
    total = sum(u.num_samples for u in seen)
    w = sum(u.num_samples / total * (u.tensors[key_b].astype(np.float64) @ u.tensors[key_a].astype(np.float64)) for u in seen)
    u_, s, vt = np.linalg.svd(w, full_matrices=False)
    g = server.global_tensors[key_b].astype(np.float64) @ server.global_tensors[key_a].astype(np.float64)
    np.testing.assert_allclose(g, (u_[:, :8] * s[:8]) @ vt[:8], atol=1e-5 * float(s[0]))

    # round 2's rank-4 payload (now a truncated SVD of non-zero products) loads into the real model
    assignment = strategy.configure_train(2, [infos[0]], server.global_tensors)[0]
    assert assignment.tensors["0.query/lora_A"].shape == (4, 32) and assignment.tensors["0.query/lora_B"].dtype == np.float32
    federation.clients[0].receive(assignment.tensors, dict(assignment.ranks))
    assert federation.model.ranks() == {m: 4 for m in modules}
    federation.model.set_ranks({})
