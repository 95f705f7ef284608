"""Memory measurement against hand-computed cases, and the cost model against measurement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedpilot.cli import main
from fedpilot.cli.profile import analytic_cost_model
from fedpilot.config import Config
from fedpilot.core.errors import FedpilotError
from fedpilot.data.split import SplitData
from fedpilot.memory.calibrate import calibrate, decompose_step, load_or_calibrate, measure_peak
from fedpilot.memory.validate import compare_predictions, random_module_sets
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.measure import PeakMeter, measure_step
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.strategies import STRATEGIES, ClientInfo, FederationContext

MIB = 1 << 20


def test_peak_meter_follows_allocations_and_frees() -> None:
    with PeakMeter() as meter:
        a = torch.empty(1 * MIB, dtype=torch.uint8)
        b = torch.empty(2 * MIB, dtype=torch.uint8)
        del a
        c = torch.empty(3 * MIB, dtype=torch.uint8)
        del b, c
    assert meter.peak_bytes - meter.before_bytes == 5 * MIB


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_single_linear_layer_step_matches_the_hand_count(optimizer: str) -> None:
    """y = x W^T, loss = sum(y^2): backward holds dL/dy (Y bytes) and dL/dW (W bytes) at once."""
    layer = nn.Linear(256, 512, bias=False)
    x = torch.randn(64, 256)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1) if optimizer == "sgd" else torch.optim.AdamW(layer.parameters())

    def step() -> None:
        loss = layer(x).square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    w_bytes, x_bytes, y_bytes = 512 * 256 * 4, 64 * 256 * 4, 64 * 512 * 4
    memory = measure_step(layer, opt, step)
    assert memory.trainable_params == w_bytes and memory.frozen_weights == 0
    assert memory.gradients == w_bytes
    assert memory.saved_activations == x_bytes + y_bytes  # mm saves x, square saves y
    if optimizer == "sgd":
        assert memory.optimizer_state == 0
        # weights + input alive before; at the peak also dL/dy and dL/dW (plus two 4-byte scalars)
        assert 0 <= memory.peak - (2 * w_bytes + x_bytes + y_bytes) <= 64
    else:
        assert memory.optimizer_state == 2 * w_bytes + 4  # exp_avg, exp_avg_sq, step
        assert memory.peak >= 4 * w_bytes + x_bytes + y_bytes


@pytest.fixture(scope="module")
def small_setting(tiny_config: Config, tiny_data: SplitData, shared_model: LoraModel):
    batch = tiny_data.train.subset(np.arange(tiny_config.train.batch_size))
    return shared_model, batch, TrainInstructions.from_settings(tiny_config.train, seed=0)


def test_activation_cost_falls_as_the_lowest_trained_layer_rises(small_setting) -> None:
    model, batch, instructions = small_setting
    peaks = [measure_peak(model, [f"{layer}.query"], batch, instructions) for layer in range(model.num_layers)]
    assert all(lower > higher for lower, higher in zip(peaks, peaks[1:])), peaks


def test_predictions_match_measurement_on_a_small_configuration(small_setting, tiny_config: Config) -> None:
    model, batch, instructions = small_setting
    calibrated = calibrate(model, batch, instructions)
    analytic = analytic_cost_model(tiny_config)
    rows = compare_predictions(model, batch, instructions, random_module_sets(model.modules, 8, seed=1), {"calibrated": calibrated, "analytic": analytic})
    assert max(r["calibrated_error"] for r in rows) <= 0.05
    assert max(r["analytic_error"] for r in rows) <= 0.25


def test_decomposition_accounts_for_the_trainable_modules(small_setting) -> None:
    model, batch, instructions = small_setting
    one = decompose_step(model, ["5.value"], batch, instructions)
    two = decompose_step(model, ["4.query", "5.value"], batch, instructions)
    lora_bytes = sum(model.params[k].nbytes for k in model.module_keys["4.query"])
    assert two.trainable_params - one.trainable_params == lora_bytes
    assert two.gradients - one.gradients == lora_bytes
    assert two.optimizer_state - one.optimizer_state == 2 * lora_bytes + 2 * 4  # Adam moments, step counters
    assert two.saved_activations > one.saved_activations and two.peak > one.peak


def test_calibration_is_cached_by_its_settings(small_setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPILOT_CACHE", str(tmp_path))
    model, batch, instructions = small_setting
    first, cached_first = load_or_calibrate(model, batch, instructions)
    again, cached_again = load_or_calibrate(model, batch, instructions)
    assert (cached_first, cached_again) == (False, True) and again == first
    _, cached_smaller = load_or_calibrate(model, batch.subset(np.arange(4)), instructions)
    assert not cached_smaller


def test_budget_below_the_cheapest_set_names_client_budget_and_cost() -> None:
    """The start-up check applies the planners' margin, so a budget it passes can always be planned."""
    cost_model = CostModel(fixed=100 * MIB, activation=(50 * MIB, 20 * MIB), module={"0.query": 3 * MIB, "1.query": 3 * MIB})
    context = FederationContext(["0.query", "1.query"], {}, {}, 2, 8, cost_model, memory_margin=0.5 / 123)
    strategy = STRATEGIES["fedpilot"](context)

    def check(*budgets: int | None) -> None:
        strategy.check_budgets([ClientInfo(cid, 10, b) for cid, b in enumerate(budgets)])

    check(None, 124 * MIB)
    with pytest.raises(FedpilotError, match=r"client 1 has 123.0 MiB \(122.5 MiB usable after the 0% memory margin\), below the cheapest trainable set: training 1.query alone needs 123.0 MiB"):
        check(200 * MIB, 123 * MIB)
    with pytest.raises(FedpilotError, match=r"client 0 has 90.0 MiB .*, below the fixed cost"):
        check(90 * MIB)
    STRATEGIES["fedavg"](context).check_budgets([ClientInfo(0, 10, 90 * MIB)])  # memory-unaware: no check


def test_run_with_an_impossible_budget_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from tests.conftest import TINY

    config = {**TINY, "federation": {**TINY["federation"], "budgets": "20MiB"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "client 0 has 20.0 MiB (19.8 MiB usable after the 1% memory margin), below the fixed cost" in err


def test_profile_prints_the_per_layer_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from tests.conftest import TINY

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["profile", "--config", str(tmp_path / "c.yaml"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["layer"] for row in report["layers"]] == list(range(6))
    assert report["cheapest"]["mib"] < report["full_lora_mib"]
    assert main(["profile", "--config", str(tmp_path / "c.yaml"), "--analytic"]) == 0
    out = capsys.readouterr().out
    assert "estimated from the model config" in out and "full LoRA:" in out and "cheapest trainable set: 5.query" in out


def test_analytic_layers_prices_a_stack_of_identical_layers() -> None:
    from fedpilot.planning.costmodel import analytic_layers, lora_module_bytes

    cm = analytic_layers(1000, 7, 3, {"q": (4, 4), "f": (4, 16)}, ["q", "f"], 2, 5, "adamw", {"model": "m"})
    assert cm.activation == (21, 14, 7)  # layer l stores per_layer for each of the 3 - l layers from it up
    assert cm.module == {f"{l}.{t}": lora_module_bytes(*s, 2, 5, "adamw") for l in range(3) for t, s in (("q", (4, 4)), ("f", (4, 16)))}
    assert cm.rank_bytes["1.f"] == lora_module_bytes(4, 16, 3, 5, "adamw") - lora_module_bytes(4, 16, 2, 5, "adamw")
    assert cm.cost(["2.q", "1.f"]) == 1000 + 14 + cm.module["2.q"] + cm.module["1.f"]
    assert (cm.source, dict(cm.settings), cm.layer["2.f"]) == ("analytic", {"model": "m"}, 2)
