"""stagg ``memory`` (UpdateMemory): every client's latest update stands in for it in the rounds it sits out."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpilot.strategies import ClientUpdate
from fedpilot.strategies.aggregation_utils import sample_weighted_average
from fedpilot.strategies.compensation import UpdateMemory

KEYS = ["0.q/A", "1.q/A", "head/w"]


def start() -> dict[str, np.ndarray]:
    return {key: np.full(3, float(i), dtype=np.float32) for i, key in enumerate(KEYS)}


def reference(rounds, num_clients: int, horizon: int | None) -> dict[str, np.ndarray]:
    """The formula by arrays over all clients: y[c, key] the latest update, made[c, key] its round (-inf: none)."""
    theta = {k: v.astype(np.float64) for k, v in start().items()}
    y = {k: np.zeros((num_clients, 3)) for k in KEYS}
    n = np.zeros(num_clients)
    made = {k: np.full(num_clients, -np.inf) for k in KEYS}
    for r, plan in enumerate(rounds, start=1):
        delta = {k: {} for k in KEYS}
        for cid, samples, keys, values in plan:
            for k in keys:
                delta[k][cid] = values[k] - theta[k]
        new = {}
        for k in KEYS:
            alive = made[k] > -np.inf if horizon is None else (r - made[k]) < horizon
            senders = sorted(delta[k])
            if not senders:
                new[k] = theta[k]
                continue
            ybar = (n[alive, None] * y[k][alive]).sum(0) / n[alive].sum() if alive.any() else np.zeros(3)
            ns = np.array([next(p[1] for p in plan if p[0] == c) for c in senders], dtype=float)
            base = np.array([y[k][c] if alive[c] else ybar for c in senders])
            d = np.array([delta[k][c] for c in senders])
            new[k] = theta[k] + ybar + (ns[:, None] * (d - base)).sum(0) / ns.sum()
        for cid, samples, keys, values in plan:
            for k in keys:
                y[k][cid], made[k][cid] = delta[k][cid], r
            n[cid] = samples
        theta = new
    return theta


@st.composite
def federations(draw):
    num_clients = draw(st.integers(2, 5))
    rounds = []
    for _ in range(draw(st.integers(1, 5))):
        cids = draw(st.lists(st.integers(0, num_clients - 1), min_size=1, max_size=num_clients, unique=True))
        plan = []
        for cid in cids:
            keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
            values = {k: np.asarray(draw(st.lists(st.floats(-4, 4, width=32), min_size=3, max_size=3)), dtype=np.float32) for k in keys}
            plan.append((cid, draw(st.integers(1, 9)), keys, values))
        rounds.append(plan)
    return num_clients, rounds, draw(st.one_of(st.none(), st.integers(1, 4)))


def run(memory: UpdateMemory, rounds) -> dict[str, np.ndarray]:
    theta = start()
    for plan in rounds:
        theta = memory.aggregate(theta, [ClientUpdate(cid, samples, values) for cid, samples, _keys, values in plan])
    return theta


@settings(max_examples=60, deadline=None)
@given(federations())
def test_memory_matches_the_formula(federation) -> None:
    num_clients, rounds, horizon = federation
    got = run(UpdateMemory(horizon), rounds)
    want = reference(rounds, num_clients, horizon)
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-4)


def test_first_round_and_full_participation_and_horizon_one_are_fedavg() -> None:
    rng = np.random.default_rng(0)
    memory, short = UpdateMemory(), UpdateMemory(horizon=1)
    theta = theta_short = start()
    for r in range(4):
        updates = [ClientUpdate(c, c + 1, {k: rng.normal(size=3).astype(np.float32) for k in KEYS}) for c in range(3)]
        expected = sample_weighted_average(theta, updates)
        theta = memory.aggregate(theta, updates)  # every client every round: the memory cancels out
        for key in KEYS:
            np.testing.assert_allclose(theta[key], expected[key], rtol=1e-5, atol=1e-6)
        partial = updates[: 1 + r % 3]
        expected_short = sample_weighted_average(theta_short, partial)
        theta_short = short.aggregate(theta_short, partial)  # horizon 1: nothing remembered survives a round
        for key in KEYS:
            np.testing.assert_allclose(theta_short[key], expected_short[key], rtol=1e-5, atol=1e-6)


def test_a_client_sitting_out_keeps_its_say() -> None:
    """Two one-class clients pull a tensor opposite ways; when only one returns, the other's last update still counts."""
    memory, theta = UpdateMemory(), {"w": np.zeros(1, dtype=np.float32)}
    theta = memory.aggregate(theta, [ClientUpdate(0, 1, {"w": np.array([1.0], np.float32)}), ClientUpdate(1, 1, {"w": np.array([-1.0], np.float32)})])
    assert theta["w"] == pytest.approx([0.0])
    theta = memory.aggregate(theta, [ClientUpdate(0, 1, {"w": np.array([1.0], np.float32)})])
    # FedAvg would move to +1; the memory averages client 0's fresh +1 with client 1's remembered -1
    assert theta["w"] == pytest.approx([0.0])
    untouched = memory.aggregate(theta, [ClientUpdate(0, 1, {})])
    assert untouched["w"] == pytest.approx(theta["w"])  # nobody sent it: it stays put


def test_state_round_trip_continues_identically() -> None:
    rng = np.random.default_rng(1)
    plans = [[ClientUpdate(c, int(rng.integers(1, 5)), {k: rng.normal(size=3).astype(np.float32) for k in KEYS[: 1 + c]}) for c in rng.choice(4, 2, replace=False)] for _ in range(5)]
    whole, first = UpdateMemory(horizon=3), UpdateMemory(horizon=3)
    theta = start()
    for plan in plans:
        theta = whole.aggregate(theta, plan)
    resumed = start()
    for plan in plans[:2]:
        resumed = first.aggregate(resumed, plan)
    second = UpdateMemory(horizon=3)
    second.load_state_dict(first.state_dict())
    for plan in plans[2:]:
        resumed = second.aggregate(resumed, plan)
    for key in KEYS:
        np.testing.assert_array_equal(theta[key], resumed[key])


def test_a_mismatched_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="head/w: client 2 sent shape"):
        UpdateMemory().aggregate(start(), [ClientUpdate(2, 1, {"head/w": np.zeros(4, np.float32)})])


# -- the IG-score variants and fedpilot's options that choose them -------------------------------

from fedpilot.planning.costmodel import CostModel  # noqa: E402
from fedpilot.planning.scoring import GlobalCoverage, ig_scores  # noqa: E402
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext  # noqa: E402


def test_per_module_local_terms_scale_with_the_parameter_count() -> None:
    modules = ["0.q", "0.f", "1.q"]
    sizes = {"0.q": 10, "0.f": 40, "1.q": 10}
    got = ig_scores({"0.q": 1.0, "0.f": 1.0}, {}, modules, weight=1.0, sizes=sizes)
    # 1.q is unscored: the mean per-parameter term (1.0), times its size; then shares of 10 : 40 : 10
    assert got == pytest.approx({"0.q": 1 / 6, "0.f": 4 / 6, "1.q": 1 / 6})
    assert ig_scores({"0.q": 1.0, "0.f": 1.0}, {}, modules, weight=1.0) == pytest.approx({m: 1 / 3 for m in modules})


def test_coverage_deficit_is_a_moving_average_of_the_share_left_out() -> None:
    tracker = GlobalCoverage(["0.q", "1.q"], decay=0.5)
    tracker.observe_coverage({"0.q": 1.0, "1.q": 0.25})
    assert tracker.change == pytest.approx({"0.q": 0.0, "1.q": 0.75})
    tracker.observe_coverage({"0.q": 0.5})  # 1.q trained by nobody: deficit 1
    assert tracker.change == pytest.approx({"0.q": 0.25, "1.q": 0.875})


def small_fedpilot(**options):
    modules = [f"{l}.{t}" for l in range(2) for t in ("q", "f")]
    keys = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in modules} | {"head": ["head/w"]}
    shapes = {k: ((2, 12) if k.startswith(tuple(m for m in modules if m.endswith("f"))) else (2, 3)) for ks in keys.values() for k in ks}
    cost_model = CostModel(fixed=100, activation=(0, 0), module={m: (40 if m.endswith("f") else 10) for m in modules})
    context = FederationContext(modules, keys, shapes, 2, 2, cost_model)
    name = options.pop("name", "fedpilot")
    strategy = STRATEGIES[name](context, STRATEGIES[name].Options(**options))
    return strategy, context


def test_fedpilot_options_wire_the_variants() -> None:
    strategy, context = small_fedpilot(local_term="per-module", global_term="coverage", ig_weight=1.0, stagg="memory")
    assert strategy.sizes == {"0.q": 12, "0.f": 48, "1.q": 12, "1.f": 48}
    # equal per-parameter Fisher: per module, an f (48 parameters, cost 40) beats q + q (24, cost 20) in a budget of 40
    strategy.local_scores[0] = {m: 1.0 for m in context.modules}
    client = ClientInfo(0, 10, 100 + 40)
    assert strategy.allocate(client).modules in (["0.f"], ["1.f"])
    per_parameter, _ = small_fedpilot(ig_weight=1.0)
    per_parameter.local_scores[0] = {m: 1.0 for m in context.modules}
    assert sorted(per_parameter.allocate(client).modules) == ["0.q", "1.q"]
    # coverage: client 0 (3 samples) trained 0.q only, client 1 (1 sample) trained 0.q and 1.f
    zero = {k: np.zeros(s, np.float32) for k, s in context.shapes.items()}
    sent = lambda ms: {k: np.ones(context.shapes[k], np.float32) for m in ms for k in context.module_keys[m]}  # noqa: E731
    strategy.aggregate_train(1, zero, [ClientUpdate(0, 3, sent(["0.q"])), ClientUpdate(1, 1, sent(["0.q", "1.f"]))])
    assert strategy.global_change.change == pytest.approx({"0.q": 0.0, "0.f": 1.0, "1.q": 1.0, "1.f": 0.75})
    assert isinstance(strategy.compensation, UpdateMemory)
    state = strategy.state_dict()
    again, _ = small_fedpilot(local_term="per-module", global_term="coverage", ig_weight=1.0, stagg="memory")
    again.load_state_dict(state)
    assert again.global_change.change == strategy.global_change.change
    assert again.compensation.samples == {0: 3, 1: 1}


# -- local_scope: federation and keep_margin (the stability rule) --------------------------------

from fedpilot.planning.scoring import federation_local  # noqa: E402
from fedpilot.strategies.aggregation_utils import coverage  # noqa: E402


def test_federation_local_is_the_mean_of_the_clients_shares() -> None:
    modules = ["0.q", "0.f", "1.q"]
    clients = [{"0.q": 3.0, "0.f": 1.0}, {"0.q": 1.0, "0.f": 1.0, "1.q": 2.0}]
    # client 0: 1.q unscored -> mean 2.0, shares 3/6 1/6 2/6; client 1: 1/4 1/4 2/4
    want = np.mean([[3 / 6, 1 / 6, 2 / 6], [1 / 4, 1 / 4, 2 / 4]], axis=0)
    assert federation_local(clients, modules) == pytest.approx(dict(zip(modules, want)))
    assert federation_local([], modules) == pytest.approx({m: 1 / 3 for m in modules})
    sizes = {"0.q": 1, "0.f": 4, "1.q": 1}
    sized = np.mean([np.array([3, 4, 2]) / 9, np.array([1, 4, 2]) / 7], axis=0)
    assert federation_local(clients, modules, sizes) == pytest.approx(dict(zip(modules, sized)))


def test_federation_scope_plans_every_client_with_the_same_values() -> None:
    strategy, context = small_fedpilot()  # the default scope
    assert strategy.options.local_scope == "federation"
    strategy.local_scores = {0: {"0.q": 5.0, "1.q": 1.0}, 1: {"0.f": 2.0, "1.f": 7.0}}
    values = strategy.module_values(0)
    assert values == strategy.module_values(1) == strategy.module_values(9)
    local = federation_local(strategy.local_scores.values(), context.modules)
    assert values == pytest.approx({m: 0.5 * local[m] + 0.5 * 0.25 for m in context.modules})  # no global change yet: uniform
    own, _ = small_fedpilot(local_scope="client")
    own.local_scores = strategy.local_scores
    assert own.module_values(0) != own.module_values(1)


def test_keep_margin_keeps_the_previous_set_unless_the_optimum_gains_more_than_mu() -> None:
    client = ClientInfo(0, 10, 100 + 40)  # room for 40: four q (10 each) or one f (40)
    for mu in (0.0, 0.25, 1.0):
        strategy, context = small_fedpilot(ig_weight=1.0, keep_margin=mu)
        strategy.local_scores[0] = {"0.q": 4.0, "1.q": 4.0, "0.f": 1.0, "1.f": 1.0}
        first = strategy.configure_train(1, [client], {})[0].modules
        assert sorted(first) == ["0.q", "1.q"]  # the optimum, nothing to keep yet
        for f in (1.0, 1.2, 1.5, 2.5, 4.0, 9.0):  # 1.f grows more valuable
            strategy.local_scores[0] = {"0.q": 4.0, "1.q": 4.0, "0.f": 1.0, "1.f": 4.0 * f}
            values = strategy.module_values(0)
            kept = strategy.trained[0]
            best = max(((m,) for m in context.modules if m.endswith("f")), key=lambda s: sum(values[m] for m in s))
            best = max([best, ("0.q", "1.q")], key=lambda s: sum(values[m] for m in s))  # brute force over what fits
            got = strategy.configure_train(2, [client], {})[0].modules
            if sum(values[m] for m in best) > (1 + mu) * sum(values[m] for m in kept):
                assert sorted(got) == sorted(best)
            else:
                assert tuple(got) == kept


def test_keep_margin_drops_a_previous_set_that_no_longer_fits_and_survives_a_checkpoint() -> None:
    strategy, context = small_fedpilot(keep_margin=10.0)
    strategy.local_scores[0] = {m: 1.0 for m in context.modules}
    roomy, tight = ClientInfo(0, 10, 100 + 80), ClientInfo(0, 10, 100 + 20)
    first = strategy.configure_train(1, [roomy], {})[0].modules
    again, _ = small_fedpilot(keep_margin=10.0)
    again.load_state_dict(strategy.state_dict())
    assert again.trained == {0: tuple(first)}
    assert again.configure_train(2, [roomy], {})[0].modules == first  # kept, however large the margin
    assert again.configure_train(3, [tight], {})[0].modules != first  # no longer fits: re-solved
    legacy = {k: v for k, v in strategy.state_dict().items() if k != "trained"}
    older, _ = small_fedpilot(keep_margin=10.0)
    older.load_state_dict(legacy)  # a checkpoint from before keep_margin
    assert older.trained == {}


def test_coverage_is_the_sample_share_of_the_senders() -> None:
    _, context = small_fedpilot()
    sent = lambda ms: {k: np.ones(context.shapes[k], np.float32) for m in ms for k in context.module_keys[m]}  # noqa: E731
    got = coverage([ClientUpdate(0, 3, sent(["0.q"])), ClientUpdate(1, 1, sent(["0.q", "1.f"]))], context.module_keys, context.modules)
    assert got == {"0.q": 1.0, "0.f": 0.0, "1.q": 0.0, "1.f": 0.25}
    assert coverage([], context.module_keys, context.modules) == {m: 0.0 for m in context.modules}
