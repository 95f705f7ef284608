"""Sample-weighted aggregation of named tensors (aggregation_utils and the FedAvg strategy): exact
against numpy, and never a broadcast."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpilot.planning.costmodel import CostModel
from fedpilot.strategies import STRATEGIES, Assignment, ClientInfo, ClientUpdate, FederationContext
from fedpilot.strategies.aggregation_utils import sample_weighted_average, weighted_mean

KEYS = ("0.query/lora_A", "1.query/lora_A", "head/w")
CONTEXT = FederationContext(
    modules=["0.query", "1.query"],
    module_keys={"0.query": ["0.query/lora_A"], "1.query": ["1.query/lora_A"], "head": ["head/w"]},
    shapes={key: (4, 3) for key in KEYS},
    num_layers=2,
    rank=4,
    cost_model=CostModel(fixed=100, activation=(50, 20), module={"0.query": 3, "1.query": 3}),
)


def make_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal((4, 3)).astype(np.float32) for key in KEYS}


def test_fedavg_trains_every_module_on_every_client() -> None:
    strategy = STRATEGIES["fedavg"](CONTEXT)
    plan = strategy.configure_train(1, [ClientInfo(0, 10), ClientInfo(5, 3)], make_tensors(0))
    assert plan == {0: Assignment(("0.query", "1.query")), 5: Assignment(("0.query", "1.query"))}


def test_identical_updates_aggregate_to_themselves() -> None:
    update = make_tensors(1)
    updates = [ClientUpdate(cid, n, {k: v.copy() for k, v in update.items()}) for cid, n in enumerate((3, 17, 40))]
    result = STRATEGIES["fedavg"](CONTEXT).aggregate_train(1, make_tensors(0), updates)
    assert all(np.array_equal(result[k], update[k]) for k in update)


def test_two_clients_give_the_sample_weighted_mean() -> None:
    a, b = make_tensors(1), make_tensors(2)
    result = STRATEGIES["fedavg"](CONTEXT).aggregate_train(1, make_tensors(0), [ClientUpdate(0, 30, a), ClientUpdate(1, 10, b)])
    for key in a:  # exact: the mean is taken in float64, then rounded once to float32
        np.testing.assert_array_equal(result[key], (0.75 * a[key].astype(np.float64) + 0.25 * b[key].astype(np.float64)).astype(np.float32))


def test_a_tensor_is_averaged_over_its_senders_only() -> None:
    start, a, b = make_tensors(0), make_tensors(1), make_tensors(2)
    only_a = {k: v for k, v in a.items() if not k.startswith("1.")}
    result = STRATEGIES["fedavg"](CONTEXT).aggregate_train(1, start, [ClientUpdate(0, 30, only_a), ClientUpdate(1, 10, {"head/w": b["head/w"]})])
    assert np.array_equal(result["0.query/lora_A"], a["0.query/lora_A"])
    assert np.array_equal(result["1.query/lora_A"], start["1.query/lora_A"])
    np.testing.assert_allclose(result["head/w"], 0.75 * a["head/w"] + 0.25 * b["head/w"], rtol=1e-5)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_lower_rank_tensor_is_refused_whatever_the_client_order(order: tuple[int, int]) -> None:
    """A rank-1 update would broadcast into rank 4 under numpy rules: refused, in either order."""
    start, full = make_tensors(0), make_tensors(1)
    low = {**full, "0.query/lora_A": full["0.query/lora_A"][:1]}
    updates = [ClientUpdate(0, 5, full), ClientUpdate(1, 5, low)]
    with pytest.raises(ValueError, match=r"0.query/lora_A: client 1 sent shape \(1, 3\), the global tensor has \(4, 3\)"):
        sample_weighted_average(start, [updates[i] for i in order])
    with pytest.raises(ValueError, match="cannot average tensors of shapes"):
        weighted_mean([full["0.query/lora_A"], low["0.query/lora_A"]][:: 1 if order == (0, 1) else -1], [1, 1])


@given(st.lists(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5),
                           elements=st.floats(-1e3, 1e3, width=32)), min_size=0, max_size=4))
def test_squared_norm_is_the_squared_norm_of_all_entries_together(arrays: list[np.ndarray]) -> None:
    from fedpilot.core.tensors import squared_norm

    flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays]) if arrays else np.zeros(0)
    assert squared_norm(*arrays) == pytest.approx(float(np.linalg.norm(flat)) ** 2, rel=1e-12, abs=1e-12)
