"""Issue 13: frozen modules folded off the compute path, the cheap meter, the evaluation cadence."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from fedpilot.comparison import rounds_to_target, summarise_run
from fedpilot.config import Config, parse_config
from fedpilot.data.split import SplitData
from fedpilot.federation import build_federation
from fedpilot.memory.calibrate import measure_peak
from fedpilot.runtime.client import Client, StepPeaks
from fedpilot.runtime.evaluation import Evaluator, evaluate, stratified_subset
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.measure import PeakMeter, optimizer_tensors, release_gradients, storage_bytes
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import make_optimizer, training_step
from fedpilot.simulation import run_simulation
from fedpilot.strategies.base import Assignment


def _random_adapter(model: LoraModel, seed: int) -> dict[str, np.ndarray]:
    """Every LoRA tensor (B included) and base delta non-zero, so folding changes the function if it is wrong."""
    rng = np.random.default_rng(seed)
    return {k: (0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in model.state().items()}


def _base_weights(model: LoraModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.peft.named_parameters() if "base_layer" in n}


@pytest.fixture(scope="module")
def no_dropout_model(tiny_config: Config, tiny_data: SplitData) -> LoraModel:
    """LoRA dropout 0: the unfolded path is then deterministic, so the fold must reproduce it."""
    lora = tiny_config.model.lora.model_copy(update={"dropout": 0.0})
    settings = tiny_config.model.model_copy(update={"lora": lora})
    return LoraModel(settings, num_labels=len(tiny_data.label_names), seed=0, base_deltas=True)


def _train(model: LoraModel, modules: list[str], data, tensors, fold: bool, steps: int = 3, merge: bool = False) -> dict[str, np.ndarray]:
    model.set_ranks({})
    model.load_state(tensors)
    params = model.set_trainable(modules)
    optimizer = make_optimizer(params, TrainInstructions(local_steps=steps, batch_size=8, optimizer="adamw", lr=0.003, weight_decay=0.0, seed=0))
    model.peft.train()
    rows = torch.arange(8)
    if fold:
        with model.fold_frozen(modules, merge=merge) as folded:
            assert sorted(folded) == sorted(set(model.modules) - set(modules))
            for _ in range(steps):
                training_step(model, optimizer, data, rows)
    else:
        for _ in range(steps):
            training_step(model, optimizer, data, rows)
    out = model.state(model.keys_for(modules))
    model.set_trainable([])
    return out


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("modules", [["5.query", "5.value"], ["1.value", "3.query", "5.value"], []])
def test_folded_training_equals_the_unfolded_path_and_leaves_base_weights_bit_identical(
    no_dropout_model: LoraModel, tiny_data: SplitData, modules: list[str], merge: bool
) -> None:
    model = no_dropout_model
    tensors = _random_adapter(model, seed=1)  # base deltas too: the fold must start from W = original + delta
    data = tiny_data.train.subset(np.arange(8))
    model.load_state(tensors)
    before = _base_weights(model)
    unfolded = _train(model, modules, data, tensors, fold=False)
    folded = _train(model, modules, data, tensors, fold=True, merge=merge)
    after = _base_weights(model)
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert all(type(layer).forward is layer.forward.__func__ for layer in model._lora_layers.values())  # PEFT's forward is back
    for key in unfolded:
        np.testing.assert_allclose(folded[key], unfolded[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_evaluation_with_every_module_folded_equals_the_unfolded_forward(no_dropout_model: LoraModel, tiny_data: SplitData) -> None:
    model = no_dropout_model
    tensors = _random_adapter(model, seed=2)
    split = tiny_data.test.subset(np.arange(40))
    folded = evaluate(model, tensors, split, batch_size=16)
    model.peft.eval()
    with torch.no_grad():
        features, labels = split.batch(slice(0, 40), model.device)
        output = model.forward(features)  # unfolded: PEFT's own path
    assert folded["loss"] == pytest.approx(float(model.runtime.loss(output, labels, "mean")), rel=1e-5)


def test_client_train_folds_frozen_modules_and_restores_them(shared_model: LoraModel, tiny_data: SplitData) -> None:
    """Through Client.train (dropout 0.05 on the trained modules): weights bit-identical, forwards restored,
    frozen modules dropout-free (the result is reproducible and independent of their dropout)."""
    model = shared_model
    tensors = _random_adapter(model, seed=3)
    client = Client(0, model, tiny_data.train.subset(np.arange(24)), StepPeaks())
    config = TrainInstructions(local_steps=3, batch_size=8, optimizer="adamw", lr=0.003, weight_decay=0.0, seed=5)
    before = _base_weights(model)
    first, metrics = client.train(Assignment(("5.query",)), tensors, config)
    again, _ = client.train(Assignment(("5.query",)), tensors, config)
    after = _base_weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all("forward" not in layer.__dict__ for layer in model._lora_layers.values())
    assert all(np.array_equal(first[k], again[k]) for k in first) and metrics["peak_bytes"] > 0


def test_fold_refuses_unknown_modules_and_restores_after_an_error(shared_model: LoraModel) -> None:
    with pytest.raises(KeyError):
        with shared_model.fold_frozen(["9.query"]):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with shared_model.fold_frozen([]):
            raise RuntimeError("boom")
    assert not shared_model._folded and all("forward" not in layer.__dict__ for layer in shared_model._lora_layers.values())


def test_low_rank_fold_adds_no_memory_and_merged_weights_are_resident(shared_model: LoraModel) -> None:
    """The fold's extra memory is honest: none on the training path; every merged weight joins the
    tensors a peak counts from."""
    outside = storage_bytes(shared_model.resident_tensors())
    with shared_model.fold_frozen(["5.query"]) as folded:
        assert len(folded) == len(shared_model.modules) - 1
        assert storage_bytes(shared_model.resident_tensors()) == outside
    with shared_model.fold_frozen(["5.query"], merge=True) as folded:
        inside = storage_bytes(shared_model.resident_tensors())
        extra = sum(shared_model._folded[m].nbytes for m in folded)
    assert len(folded) == len(shared_model.modules) - 1
    assert inside - outside == extra == sum(np.prod(shared_model._lora_layers[m].get_base_layer().weight.shape) * 4 for m in folded)


def test_cheap_meter_sees_the_same_allocations_as_the_full_memory_profile(shared_model: LoraModel, tiny_data: SplitData) -> None:
    """Allocation events alone give the same in-step peak as the profiler's memory timeline; the starting
    point is the resident storages."""
    model = shared_model
    batch = tiny_data.train.subset(np.arange(8))
    model.set_ranks({})
    with model.fold_frozen(["5.value"]):
        params = model.set_trainable(["5.value"])
        optimizer = make_optimizer(params, TrainInstructions(local_steps=1, batch_size=8, optimizer="adamw", lr=0.001, weight_decay=0.0, seed=0))
        model.peft.train()
        rows = torch.arange(8)
        training_step(model, optimizer, batch, rows)
        release_gradients(optimizer)
        with PeakMeter() as full:
            training_step(model, optimizer, batch, rows)
        release_gradients(optimizer)
        resident = [*model.resident_tensors(), *optimizer_tensors(optimizer)]
        with PeakMeter(resident=resident) as cheap:
            training_step(model, optimizer, batch, rows)
    model.set_trainable([])
    assert cheap.before_bytes == storage_bytes(resident)
    assert cheap.peak_bytes - cheap.before_bytes == full.peak_bytes - full.before_bytes


def test_peak_meter_with_resident_tensors_counts_allocations_from_them() -> None:
    kept = torch.empty(1 << 20, dtype=torch.uint8)
    with PeakMeter(resident=[kept, kept[:10]]) as meter:  # a view shares its storage: counted once
        a = torch.empty(2 << 20, dtype=torch.uint8)
        del a
        b = torch.empty(1 << 20, dtype=torch.uint8)
        del b
    assert (meter.before_bytes, meter.peak_bytes) == (1 << 20, 3 << 20)


def test_calibrated_probe_is_the_clients_measured_step(shared_model: LoraModel, tiny_data: SplitData, tiny_config: Config) -> None:
    """Calibration and Client.train measure the same folded step: equal peaks on the same batch."""
    model = shared_model
    batch = tiny_data.train.subset(np.arange(8))
    instructions = TrainInstructions.from_settings(tiny_config.train, seed=0)
    probe = measure_peak(model, ["4.query", "5.value"], batch, instructions)
    client = Client(0, model, batch, StepPeaks())
    config = TrainInstructions(local_steps=2, batch_size=8, optimizer=instructions.optimizer, lr=instructions.lr, weight_decay=0.0, seed=0)
    _, metrics = client.train(Assignment(("4.query", "5.value")), model.state(), config)
    assert abs(metrics["peak_bytes"] - probe) <= 0.01 * probe


# -- evaluation cadence ----------------------------------------------------------------------------------


def test_stratified_subset_is_fixed_sized_proportional_and_seeded() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    chosen = stratified_subset(labels, 10, seed=3)
    assert len(chosen) == 10 and np.bincount(labels[chosen]).tolist() == [5, 3, 2]
    assert np.array_equal(chosen, stratified_subset(labels, 10, seed=3))
    assert not np.array_equal(chosen, stratified_subset(labels, 10, seed=4))
    assert np.array_equal(stratified_subset(labels, 500, seed=0), np.arange(100))


def test_rounds_to_target_and_best_accuracy_pass_over_rounds_not_evaluated() -> None:
    assert rounds_to_target([0.2, None, 0.9, None, 0.95], 0.85) == 2
    assert rounds_to_target([0.2, None, None], 0.5) is None


def test_eval_cadence_leaves_gaps_evaluates_the_final_round_on_the_whole_split(tiny_config: Config, tmp_path) -> None:
    config = tiny_config.model_copy(
        update={
            "strategy": "fedavg",
            "federation": tiny_config.federation.model_copy(update={"budgets": None, "rounds": 3}),
            "train": tiny_config.train.model_copy(update={"local_steps": 1, "eval_every": 2, "eval_subset": 20}),
        }
    )
    result = run_simulation(config, tmp_path / "run", progress=False)
    rounds = result.rounds
    test_samples = result.results["test_samples"]
    assert [r["evaluated"] for r in rounds] == [True, False, True, True]
    assert "accuracy" not in rounds[1] and "loss" not in rounds[1]
    assert rounds[0]["eval_samples"] == test_samples  # round 0: the whole split
    assert rounds[2]["eval_samples"] == 20  # a round between: the fixed subset
    assert rounds[3]["eval_samples"] == test_samples  # the final round: the whole split
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["accuracy"] == "" and rows[3]["accuracy"] != ""
    summary = summarise_run(json.loads((tmp_path / "run" / "results.json").read_text()))
    assert summary["accuracy_curve"][1] is None and summary["final_accuracy"] == rounds[3]["accuracy"]
    assert (tmp_path / "run" / "accuracy.png").is_file()


def test_eval_fields_are_validated() -> None:
    with pytest.raises(Exception, match="eval_every"):
        parse_config({"train": {"eval_every": 0}})
    with pytest.raises(Exception, match="eval_subset"):
        parse_config({"train": {"eval_subset": 0}})
    assert parse_config({}).train.eval_every == 1 and parse_config({}).train.eval_subset is None


def test_evaluator_subset_is_drawn_once(tiny_data: SplitData, shared_model: LoraModel) -> None:
    evaluator = Evaluator(shared_model, tiny_data.test, 64, subset=10, seed=0)
    assert evaluator.subset_split is not None and len(evaluator.subset_split) == 10
    assert Evaluator(shared_model, tiny_data.test, 64, subset=10_000).subset_split is None
    _ = build_federation  # the cadence itself is exercised end to end above
