"""Sample-weighted aggregation of named tensors (strategy_utils and the FedAvg strategy)."""

from __future__ import annotations

import torch

from fedpilot.memory.costmodel import CostModel
from fedpilot.strategies import STRATEGIES, ClientInfo, ClientUpdate, FederationContext

CONTEXT = FederationContext(
    modules=["0.query", "1.query"],
    module_keys={"0.query": ["0.query/lora_A"], "1.query": ["1.query/lora_A"], "head": ["head/w"]},
    num_layers=2,
    cost_model=CostModel(fixed=100, activation=(50, 20), module={"0.query": 3, "1.query": 3}),
)


def make_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {key: torch.randn(4, 3, generator=gen) for key in ("0.query/lora_A", "1.query/lora_A", "head/w")}


def test_fedavg_trains_every_module_on_every_client() -> None:
    strategy = STRATEGIES["fedavg"](CONTEXT)
    plan = strategy.configure_train(1, [ClientInfo(0, 10), ClientInfo(5, 3)], make_tensors(0))
    assert plan == {0: ["0.query", "1.query"], 5: ["0.query", "1.query"]}


def test_identical_updates_aggregate_to_themselves() -> None:
    update = make_tensors(1)
    updates = [ClientUpdate(cid, n, {k: v.clone() for k, v in update.items()}) for cid, n in enumerate((3, 17, 40))]
    result = STRATEGIES["fedavg"](CONTEXT).aggregate_train(1, make_tensors(0), updates)
    assert all(torch.equal(result[k], update[k]) for k in update)


def test_two_clients_give_the_sample_weighted_mean() -> None:
    a, b = make_tensors(1), make_tensors(2)
    result = STRATEGIES["fedavg"](CONTEXT).aggregate_train(1, make_tensors(0), [ClientUpdate(0, 30, a), ClientUpdate(1, 10, b)])
    for key in a:
        torch.testing.assert_close(result[key], 0.75 * a[key] + 0.25 * b[key])


def test_a_tensor_is_averaged_over_its_senders_only() -> None:
    start, a, b = make_tensors(0), make_tensors(1), make_tensors(2)
    only_a = {k: v for k, v in a.items() if not k.startswith("1.")}
    result = STRATEGIES["fedavg"](CONTEXT).aggregate_train(1, start, [ClientUpdate(0, 30, only_a), ClientUpdate(1, 10, {"head/w": b["head/w"]})])
    assert torch.equal(result["0.query/lora_A"], a["0.query/lora_A"])
    assert torch.equal(result["1.query/lora_A"], start["1.query/lora_A"])
    torch.testing.assert_close(result["head/w"], 0.75 * a["head/w"] + 0.25 * b["head/w"])
