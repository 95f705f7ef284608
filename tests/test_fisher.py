"""Fed-HeLLo's FIM-HLA (`fisher`): exact 1-D k-means, cluster probabilities, the server's proxy set and
its per-sample empirical Fisher, the refresh schedule, sampling by importance within budgets, and the
deterministic knapsack variant against brute force."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpilot.core.keys import module_layer
from fedpilot.data.split import hold_out_per_class
from fedpilot.families.encoding import load_split
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.server import Server
from fedpilot.strategies import STRATEGIES, ClientInfo
from fedpilot.strategies.fisher import CLUSTER_WEIGHTS, FisherAllocation, cluster_probabilities, kmeans_1d, layer_scores
from tests.test_layer_baselines import flat_context, synthetic_context


def sse(values: np.ndarray, labels: np.ndarray) -> float:
    return float(sum(((values[labels == c] - values[labels == c].mean()) ** 2).sum() for c in set(labels.tolist())))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=7), st.integers(1, 3))
def test_kmeans_1d_is_optimal_against_brute_force(values: list[float], k: int) -> None:
    x = np.array(values, dtype=np.float64)
    labels = kmeans_1d(x, k)
    kk = min(k, len(np.unique(x)))
    assert len(set(labels.tolist())) == kk
    best = min(
        sse(x, np.array(assign)) for assign in itertools.product(range(kk), repeat=len(x)) if len(set(assign)) == kk
    )
    assert sse(x, labels) == pytest.approx(best, rel=1e-9, abs=1e-9)
    centres = [x[labels == c].mean() for c in range(kk)]
    assert centres == sorted(centres)  # rank 0 = the lowest centre


def test_cluster_probabilities_follow_the_scores() -> None:
    scores = [0.1, 0.11, 5.0, 5.2, 1.0, 0.9]
    p = cluster_probabilities(scores, 3)
    assert p.sum() == pytest.approx(1.0)
    weights = np.array([1, 1, 3, 3, 2, 2], dtype=float)  # 1/27 : 2/27 : 3/27
    assert np.allclose(p, weights / weights.sum())
    assert np.allclose(cluster_probabilities([2.0] * 4), 0.25)  # no information: uniform
    assert np.allclose(cluster_probabilities([1.0, 3.0]), np.array(CLUSTER_WEIGHTS[1:]) / sum(CLUSTER_WEIGHTS[1:]))


def test_layer_scores_sum_modules_per_layer() -> None:
    assert list(layer_scores({"0.q": 1.0, "0.v": 2.0, "2.q": 4.0}, 3)) == [3.0, 0.0, 4.0]


def test_proxy_set_is_held_out_of_the_clients_data_per_class(tiny_config) -> None:
    plain = load_split(tiny_config.data, tiny_config.model.name, tiny_config.seed)
    held = load_split(tiny_config.data, tiny_config.model.name, tiny_config.seed, proxy_fraction=0.05)
    assert plain.proxy is None
    assert torch.equal(held.test.labels, plain.test.labels)
    counts = Counter(plain.train.labels.tolist())
    proxy_counts = Counter(held.proxy.labels.tolist())
    assert proxy_counts == {c: int(np.ceil(0.05 * n)) for c, n in counts.items()}
    assert len(held.train) + len(held.proxy) == len(plain.train)
    # disjoint, and together exactly the plain train split (rows compared as token sequences)
    rows = lambda split: sorted(map(tuple, split.features["input_ids"].tolist()))  # noqa: E731
    assert sorted(rows(held.train) + rows(held.proxy)) == rows(plain.train)
    kept, out = hold_out_per_class(np.arange(10), np.array([0] * 9 + [1]), 0.5, seed=0)
    assert len(out) == 5 and len(kept) == 5 and 9 in kept  # a class of one example keeps it


def test_proxy_scorer_is_the_per_sample_empirical_fisher(shared_model, tiny_data) -> None:
    from fedpilot.runtime.proxy import ProxyScorer

    proxy = tiny_data.train.subset(np.arange(5))
    rng = np.random.default_rng(0)
    tensors = {k: (v + rng.normal(0, 0.05, v.shape)).astype(v.dtype) for k, v in shared_model.state().items()}
    modules = ["0.query", "3.value", "5.query"]
    scores = ProxyScorer(shared_model, proxy)(tensors, modules)
    # independently: one batched forward, the gradient of each sample's loss taken separately
    shared_model.load_state(tensors)
    params = {k: shared_model.params[k] for m in modules for k in shared_model.module_keys[m]}
    shared_model.set_trainable(modules)
    shared_model.peft.eval()
    features, labels = proxy.batch(slice(None), shared_model.device)
    losses = shared_model.runtime.loss(shared_model.forward(features), labels, "none")
    squared = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    for i in range(len(proxy)):
        grads = torch.autograd.grad(losses[i], list(params.values()), retain_graph=True)
        for k, g in zip(params, grads):
            squared[k] += g.double() ** 2
    shared_model.set_trainable([])
    for m in modules:
        expected = sum(torch.linalg.vector_norm(squared[k] / len(proxy)).item() for k in shared_model.module_keys[m])
        assert scores[m] == pytest.approx(expected, rel=1e-4)
        assert scores[m] > 0


def test_schedule_warm_up_then_refresh_every_r_rounds() -> None:
    context = flat_context(4)
    strategy = STRATEGIES["fisher"](context, FisherAllocation.Options(warmup_rounds=2, refresh_rounds=3))
    asked = []
    for r in range(1, 10):
        if strategy.configure_proxy(r):
            asked.append(r)
            strategy.aggregate_proxy(r, {m: 1.0 + module_layer(m) for m in context.modules})
    assert asked == [3, 6, 9]


def test_clients_sample_layers_by_fisher_importance_within_budget() -> None:
    context = flat_context(6)  # every layer costs 20 above a fixed 100: a budget of 140 fits 2 layers
    strategy = STRATEGIES["fisher"](context)
    before = strategy.probabilities_now.copy()
    scores = {m: {0: 9.0, 1: 0.1, 2: 0.1, 3: 1.0, 4: 1.1, 5: 9.5}[module_layer(m)] for m in context.modules}
    strategy.aggregate_proxy(2, scores)
    assert not np.allclose(before, strategy.probabilities_now)
    client = ClientInfo(0, 10, 140)
    counts = Counter()
    for r in range(3, 603):
        modules = strategy.configure_train(r, [client], {})[0].modules
        assert context.cost_model.cost(modules) <= 140
        layers = {module_layer(m) for m in modules}
        assert len(layers) == 2 and len(modules) == 4  # whole layers, as many as fit
        counts.update(layers)
    # the top cluster (layers 0 and 5) is drawn most, the bottom one (1, 2) least
    assert min(counts[0], counts[5]) > max(counts[3], counts[4]) > max(counts[1], counts[2])
    assert strategy.configure_train(3, [client], {})[0].modules == strategy.configure_train(3, [client], {})[0].modules


def test_deterministic_variant_is_the_knapsack_with_fisher_values() -> None:
    for seed in range(5):
        context = synthetic_context(seed, layers=3)
        strategy = STRATEGIES["fisher"](context, FisherAllocation.Options(deterministic=True))
        rng = np.random.default_rng(seed)
        scores = {m: float(rng.uniform(0.1, 2.0)) for m in context.modules}
        strategy.aggregate_proxy(2, scores)
        cm: CostModel = context.cost_model
        budget = cm.cost(context.modules[-4:]) + 5
        chosen = strategy.configure_train(3, [ClientInfo(0, 10, budget)], {})[0].modules
        best = max(
            sum(scores[m] for m in subset)
            for n in range(1, len(context.modules) + 1)
            for subset in itertools.combinations(context.modules, n)
            if cm.cost(subset) <= budget
        )
        assert cm.cost(chosen) <= budget
        assert sum(scores[m] for m in chosen) == pytest.approx(best)


def test_state_round_trips_and_a_server_without_proxy_set_is_refused() -> None:
    context = flat_context(4)
    first = STRATEGIES["fisher"](context)
    first.aggregate_proxy(4, {m: float(module_layer(m)) for m in context.modules})
    second = STRATEGIES["fisher"](context)
    second.load_state_dict(first.state_dict())
    assert np.array_equal(first.probabilities_now, second.probabilities_now) and not second.configure_proxy(5)
    with pytest.raises(ValueError, match="proxy set"):
        Server(second, [ClientInfo(0, 10, None)], {}, None, 0)


def test_a_fisher_run_scores_on_the_server_and_records_it(fast_config, tmp_path) -> None:
    from fedpilot.simulation import run_simulation

    config = fast_config.model_copy(update={"strategy": "fisher"})
    result = run_simulation(config, tmp_path / "run", progress=False)
    rounds = result.rounds
    assert "proxy" not in rounds[1]  # the warm-up round samples the bottleneck prior
    proxy = rounds[2]["proxy"]
    assert proxy["modules"] == len(result.results["modules"]) == 8 and all(v > 0 for v in proxy["scores"].values())
    assert result.results["status"] == "finished" and result.results["budget_violations"] == []
