"""FedEx-LoRA and FLoRA: strategies that merge into the frozen weights. Their rules, exactly, and the
base-delta path of the model (load, restore bit for bit, export and reload)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpilot.config import Config
from fedpilot.planning.costmodel import CostModel
from fedpilot.strategies import STRATEGIES, ClientUpdate, FederationContext
from fedpilot.strategies.flora import stack

D_IN, D_OUT, RANK, SCALING = 5, 4, 2, 2.0
MODULES = ["0.q", "1.q"]
KEYS = {m: [f"{m}/lora_A", f"{m}/lora_B"] for m in MODULES} | {"head": ["head/w"]}
SHAPES = {f"{m}/lora_A": (RANK, D_IN) for m in MODULES} | {f"{m}/lora_B": (D_OUT, RANK) for m in MODULES} | {
    f"{m}/base_delta": (D_OUT, D_IN) for m in MODULES} | {"head/w": (3, 2)}
CONTEXT = FederationContext(MODULES, KEYS, SHAPES, 2, RANK, CostModel(10, (2, 1), {m: 1 for m in MODULES}), scaling=SCALING)


def random_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in SHAPES.items()}


def effective(tensors: dict[str, np.ndarray], module: str) -> np.ndarray:
    """What the module adds to its original frozen weight: D + s B A (float64)."""
    f = lambda key: tensors[f"{module}/{key}"].astype(np.float64)  # noqa: E731
    return f("base_delta") + SCALING * f("lora_B") @ f("lora_A")


def client_updates(start: dict[str, np.ndarray]) -> list[ClientUpdate]:
    updates = []
    for cid, n in enumerate((3, 5, 12)):
        rng = np.random.default_rng(100 + cid)
        sent = {k: (v + rng.standard_normal(v.shape)).astype(np.float32) for k, v in start.items() if not k.endswith("base_delta")}
        updates.append(ClientUpdate(cid, n, sent))
    return updates


def test_fedex_lora_makes_the_effective_update_the_exact_average() -> None:
    start = random_tensors(0)
    updates = client_updates(start)
    result = STRATEGIES["fedex-lora"](CONTEXT).aggregate_train(1, start, updates)
    weights = np.array([u.num_samples for u in updates], dtype=np.float64) / sum(u.num_samples for u in updates)
    for m in MODULES:
        clients = sum(w * effective({**start, **u.tensors}, m) for w, u in zip(weights, updates))
        np.testing.assert_allclose(effective(result, m), clients, rtol=1e-5, atol=1e-5)
        # A and B are the plain sample-weighted means (the residual goes to the frozen weight only)
        np.testing.assert_allclose(result[f"{m}/lora_A"], sum(w * u.tensors[f"{m}/lora_A"] for w, u in zip(weights, updates)), rtol=1e-5, atol=1e-6)
        # FedAvg's own effective update is not exact: that is the point
        fedavg = STRATEGIES["fedavg"](CONTEXT).aggregate_train(1, start, updates)
        assert np.abs(effective(fedavg, m) - clients).max() > 1e-3


def test_flora_stacking_is_exact_for_any_mix_of_ranks() -> None:
    rng = np.random.default_rng(3)
    updates = [
        ClientUpdate(0, 2, {"m/lora_A": rng.standard_normal((2, D_IN)), "m/lora_B": rng.standard_normal((D_OUT, 2))}),
        ClientUpdate(1, 6, {"m/lora_A": rng.standard_normal((4, D_IN)), "m/lora_B": rng.standard_normal((D_OUT, 4))}),
    ]
    b_stack, a_stack = stack(updates, "m/lora_A", "m/lora_B")
    assert b_stack.shape == (D_OUT, 6) and a_stack.shape == (6, D_IN)
    expected = 0.25 * updates[0].tensors["m/lora_B"] @ updates[0].tensors["m/lora_A"] + 0.75 * updates[1].tensors["m/lora_B"] @ updates[1].tensors["m/lora_A"]
    np.testing.assert_allclose(b_stack @ a_stack, expected, rtol=1e-12, atol=1e-12)


def test_flora_merges_the_weighted_sum_of_products_and_restarts_the_adapter() -> None:
    start = random_tensors(1)
    updates = client_updates(start)
    strategy = STRATEGIES["flora"](CONTEXT)
    result = strategy.aggregate_train(1, start, updates)
    weights = np.array([u.num_samples for u in updates], dtype=np.float64) / sum(u.num_samples for u in updates)
    for m in MODULES:
        products = sum(w * u.tensors[f"{m}/lora_B"].astype(np.float64) @ u.tensors[f"{m}/lora_A"].astype(np.float64) for w, u in zip(weights, updates))
        np.testing.assert_allclose(result[f"{m}/base_delta"], start[f"{m}/base_delta"] + SCALING * products, rtol=1e-5, atol=1e-5)
        assert not result[f"{m}/lora_B"].any()  # a fresh adapter adds nothing until trained
        a = result[f"{m}/lora_A"]
        assert a.shape == (RANK, D_IN) and np.abs(a).max() <= 1 / np.sqrt(D_IN) and a.std() > 0
    again = STRATEGIES["flora"](CONTEXT).aggregate_train(1, start, updates)
    assert all(np.array_equal(result[k], again[k]) for k in result)  # seeded by (run seed, round)
    assert not np.array_equal(STRATEGIES["flora"](CONTEXT).aggregate_train(2, start, updates)["0.q/lora_A"], result["0.q/lora_A"])


def test_base_deltas_move_the_frozen_weight_and_restore_it_bit_for_bit(tiny_config: Config) -> None:
    from fedpilot.runtime.lora import LoraModel

    model = LoraModel(tiny_config.model, num_labels=5, seed=0, base_deltas=True)
    key = "3.query/base_delta"
    assert model.shapes[key] == (384, 384) and set(model.tensor_keys) == set(model.shapes)
    weight = model.peft.base_model.model.bert.encoder.layer[3].attention.self.query.get_base_layer().weight
    original = weight.detach().clone()
    delta = np.random.default_rng(0).standard_normal((384, 384)).astype(np.float32)
    model.load_state({key: delta})
    torch.testing.assert_close(weight.detach(), original + torch.from_numpy(delta))
    assert np.array_equal(model.state([key])[key], delta)
    model.load_state({key: np.zeros_like(delta)})
    assert torch.equal(weight.detach(), original)
    with pytest.raises(ValueError, match="3.query/base_delta: received shape"):
        model.load_state({key: np.zeros((2, 2), np.float32)})


def test_a_merged_run_exports_an_adapter_and_base_weights_that_reproduce_it(tiny_config: Config, tiny_data, tmp_path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    from fedpilot.families import MODELS
    from fedpilot.runtime.lora import LoraModel
    from fedpilot.simulation import run_simulation

    config = tiny_config.model_copy(update={
        "strategy": "fedex-lora",
        "federation": tiny_config.federation.model_copy(update={"rounds": 1, "budgets": None}),
        "train": tiny_config.train.model_copy(update={"local_steps": 2}),
    })
    result = run_simulation(config, tmp_path / "run", progress=False)
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "base_weights.safetensors").is_file()

    spec = MODELS[config.model.name]
    base = spec.family.load_runtime().load_model(spec, 5, config.model.base_dropout)
    merged = load_file(adapter / "base_weights.safetensors")
    missing, unexpected = base.load_state_dict(merged, strict=False)
    assert not unexpected and len(merged) == 12
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    features = {k: v[:16] for k, v in tiny_data.test.features.items()}
    from fedpilot.runtime.checkpoint import load_checkpoint

    ours = LoraModel(config.model, num_labels=5, seed=7, base_deltas=True)
    ours.load_state(load_checkpoint(tmp_path / "run").global_tensors)
    ours.peft.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**features).logits, ours.forward(features), rtol=1e-5, atol=1e-5)
    assert result.results["status"] == "finished"
