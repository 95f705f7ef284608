"""Micro-batches with gradient accumulation as a planned option: the client's accumulated step is the whole batch's
step, the cost model scaled to a micro-batch prices the measured peak within 5 %, the planner is exact over module
sets x micro-batch sizes (and keeps the whole batch on a tie), and a federation that plans them trains more modules
within the same budgets with no violation."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from fedpilot.cli import main
from fedpilot.config import Config
from fedpilot.data.split import SplitData
from fedpilot.flower.codec import assignment_from_record, assignment_to_record
from fedpilot.memory.calibrate import calibrate
from fedpilot.planning.allocation import Problem, solve
from fedpilot.planning.checkpointing import micro_batch_sizes, solve_micro_batched
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.client import Client, StepPeaks
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.strategies.base import Assignment

SIX = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


@pytest.fixture(scope="module")
def six_target_model(tiny_config: Config, tiny_data: SplitData):
    lora = tiny_config.model.lora.model_copy(update={"targets": SIX, "dropout": 0.0})
    settings = tiny_config.model.model_copy(update={"lora": lora})
    return LoraModel(settings, num_labels=len(tiny_data.label_names), seed=0)


def test_micro_batches_take_the_whole_batch_step(six_target_model, tiny_config, tiny_data):
    model = six_target_model
    client = Client(0, model, tiny_data.train.subset(np.arange(40)))
    tensors = model.state()
    instructions = TrainInstructions.from_settings(tiny_config.train, seed=3)  # batch 8, 4 local steps
    modules = ("2.query", "4.attn_out", "5.value", "5.ffn_out")
    # SGD: the step is the gradient itself, so a wrongly scaled accumulation shows (AdamW would hide a constant factor)
    sgd = replace(instructions, optimizer="sgd", lr=0.5)
    whole, whole_metrics = client.train(Assignment(modules), tensors, sgd)
    for rows in (3, 1):  # 3, 3, 2 rows; eight single rows
        micro, metrics = client.train(Assignment(modules, micro_batch=rows), tensors, sgd)
        assert set(micro) == set(whole)
        for key in whole:
            torch.testing.assert_close(torch.as_tensor(micro[key]), torch.as_tensor(whole[key]), atol=1e-6, rtol=1e-5)
        assert metrics["train_loss"] == pytest.approx(whole_metrics["train_loss"], rel=1e-5)
    # AdamW: the same steps up to rounding, which its normalisation may magnify to a small share of a step
    whole, _ = client.train(Assignment(modules), tensors, instructions)
    micro, _ = client.train(Assignment(modules, micro_batch=3), tensors, instructions)
    for key in whole:
        moved = np.abs(np.asarray(whole[key]) - np.asarray(tensors[key])).max()
        assert np.abs(np.asarray(micro[key]) - np.asarray(whole[key])).max() <= 0.02 * moved, key


def test_micro_batched_scores_are_the_whole_batch_scores_and_travel_through_flower(six_target_model, tiny_data):
    """Scoring accumulates each batch's gradient over micro-batches before squaring it: the same Fisher terms."""
    from fedpilot.flower.codec import instructions_to_record, score_instructions_from_record
    from fedpilot.runtime.messages import ScoreInstructions

    model = six_target_model
    client = Client(0, model, tiny_data.train.subset(np.arange(40)))
    modules = ["3.query", "4.ffn_in", "5.value"]
    whole, _ = client.score(modules, model.state(), ScoreInstructions(batches=2, batch_size=8, seed=4))
    for rows in (3, 1):
        instructions = ScoreInstructions(batches=2, batch_size=8, seed=4, micro_batch=rows)
        assert score_instructions_from_record(instructions_to_record(instructions)) == instructions
        micro, _ = client.score(modules, model.state(), instructions)
        assert micro.keys() == whole.keys() and all(micro[m] == pytest.approx(whole[m], rel=1e-5) for m in modules)


def test_the_scaled_cost_model_prices_micro_batched_steps_within_5_percent(six_target_model, tiny_config, tiny_data):
    model = six_target_model
    batch = tiny_data.train.subset(np.arange(tiny_config.train.batch_size))
    instructions = TrainInstructions.from_settings(tiny_config.train, seed=0)
    cm = calibrate(model, batch, instructions)
    assert cm.prices_micro_batches and cm.batch_rows == 8
    assert CostModel.from_dict(cm.to_dict()) == cm
    rng = np.random.default_rng(4)
    client = Client(0, model, tiny_data.train.subset(np.arange(48)), StepPeaks())
    errors = []
    for rows in (4, 2, 1):
        scaled = cm.at_batch(rows)
        for _ in range(3):
            modules = tuple(sorted(rng.choice(model.modules, size=int(rng.integers(1, 8)), replace=False)))
            _, metrics = client.train(Assignment(modules, micro_batch=rows), model.state(), instructions)
            errors.append((scaled.cost(modules) - metrics["peak_bytes"]) / metrics["peak_bytes"])
    assert max(abs(e) for e in errors) <= 0.05, errors
    # less memory with fewer rows, never below the weights
    assert cm.at_batch(1).full() < cm.at_batch(4).full() < cm.full() and cm.at_batch(8) is cm


HAND = CostModel(fixed=100, activation=(40, 20), module={"0.q": 10, "1.q": 10}, batch_rows=4, fixed_one_row=70,
                 module_state={"0.q": 2, "1.q": 2})


def test_at_batch_by_hand():
    two = HAND.at_batch(2)  # fixed through (1, 70) and (4, 100); the rest by 2/4, module state kept
    assert two.fixed == 80 and two.activation == (20, 10) and two.module == {"0.q": 6, "1.q": 6}
    assert two.cost(["0.q", "1.q"]) == 80 + 20 + 12
    assert micro_batch_sizes(4) == [4, 2, 1] and micro_batch_sizes(6) == [6, 3, 1]
    with pytest.raises(ValueError, match="give 1 to the calibrated batch of 4"):
        HAND.at_batch(5)
    with pytest.raises(Exception, match="cannot price micro-batches"):
        CostModel(fixed=1, activation=(1,), module={"0.q": 1}).at_batch(1)


@pytest.mark.parametrize("budget", [115, 130, 150, 160, 200])
def test_the_planner_is_exact_over_sets_and_micro_batches_and_keeps_the_batch_on_a_tie(budget):
    values = {"0.q": 1.0, "1.q": 2.0}
    best = None
    for rows in micro_batch_sizes(4):
        model = HAND.at_batch(rows)
        for k in (1, 2):
            for chosen in itertools.combinations(values, k):
                if model.cost(chosen) <= budget:
                    value = math.fsum(values[m] for m in chosen)
                    if best is None or value > best[0]:
                        best = (value, 0 if rows == 4 else rows)
    answer = solve_micro_batched(Problem(budget, HAND, values))
    if best is None:
        assert answer is None
        return
    assert (answer.value, answer.micro_batch) == best  # the first (largest) size that reaches the best value
    scaled = HAND.at_batch(answer.micro_batch or 4)
    assert scaled.cost(answer.modules) == answer.predicted_bytes <= budget
    whole = solve(Problem(budget, HAND, values))
    assert whole is None or answer.value >= whole.value


def test_the_assignment_carries_its_micro_batch_through_flower():
    assignment = Assignment(("0.q",), micro_batch=2)
    assert assignment_from_record(assignment_to_record(assignment)).micro_batch == 2
    with pytest.raises(ValueError, match="micro_batch must be >= 0"):
        Assignment(("0.q",), micro_batch=-1)


def test_a_federation_planning_micro_batches_trains_more_within_the_budgets(tmp_path):
    from conftest import FAST

    outcomes = {}
    for name, options in (("plain", {"micro_batching": "off"}), ("micro", {})):  # planned is fedpilot's default
        config = {**FAST, "strategy": "fedpilot", "strategy_options": options}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        assert main(["run", "--config", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name), "--quiet"]) == 0
        outcomes[name] = json.loads((tmp_path / name / "results.json").read_text())
    for results in outcomes.values():
        assert results["budget_violations"] == []
        for record in (c for r in results["rounds"] for c in r["clients"]):
            assert record["peak_bytes"] <= record["budget_bytes"]
    trained = {name: sum(len(c["modules"]) for r in res["rounds"] for c in r["clients"]) for name, res in outcomes.items()}
    micro_records = [c for r in outcomes["micro"]["rounds"] for c in r["clients"] if c.get("micro_batch")]
    assert micro_records and trained["micro"] > trained["plain"], trained


@pytest.mark.parametrize(("strategy", "options", "message"), [
    ("fedpilot-rank", {"micro_batching": "planned"}, "does not plan micro-batches"),
    ("fedpilot", {"micro_batching": "planned", "checkpointing": "planned"}, "micro_batching: planned plans alone"),
    ("fedpilot", {"micro_batching": "planned", "nesting": "round"}, "micro_batching: planned plans alone"),
])
def test_micro_batches_are_refused_where_they_would_be_ignored(strategy, options, message):
    from fedpilot.config import parse_config
    from fedpilot.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config({"strategy": strategy, "strategy_options": options})


def test_plan_prices_each_client_at_its_micro_batch(tmp_path, capsys):
    from conftest import FAST

    (tmp_path / "micro.yaml").write_text(yaml.safe_dump({**FAST, "strategy": "fedpilot", "strategy_options": {"micro_batching": "planned"}}))
    assert main(["plan", "--config", str(tmp_path / "micro.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    micro = [c for c in plan["clients"] if c["micro_batch"]]
    assert micro and all(c["predicted_bytes"] <= c["budget_bytes"] for c in plan["clients"])
    assert main(["plan", "--config", str(tmp_path / "micro.yaml")]) == 0
    assert "\nmicro " in capsys.readouterr().out


def test_a_fixed_micro_batch_lets_a_baseline_train_more_within_the_budgets(tmp_path):
    """train.micro_batch: every client accumulates micro-batches of that size, and a memory-aware baseline (here
    fedra) plans with the cost model at that micro-batch: more modules, every measured peak within its budget."""
    from conftest import FAST

    outcomes = {}
    for name, micro in (("plain", 0), ("micro", 2)):
        config = {**FAST, "strategy": "fedra", "train": {**FAST["train"], "micro_batch": micro}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        assert main(["run", "--config", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name), "--quiet"]) == 0
        outcomes[name] = json.loads((tmp_path / name / "results.json").read_text())
    records = {name: [c for r in res["rounds"] for c in r["clients"]] for name, res in outcomes.items()}
    for name, results in outcomes.items():
        assert results["budget_violations"] == []
        assert all(c["peak_bytes"] <= c["budget_bytes"] for c in records[name])
    assert all(c.get("micro_batch", 0) == 0 for c in records["plain"])
    assert all(c["micro_batch"] == 2 for c in records["micro"])
    trained = {name: sum(len(c["modules"]) for c in recs) for name, recs in records.items()}
    assert trained["micro"] > trained["plain"], trained


@pytest.mark.parametrize(("settings", "message"), [
    ({"train": {"micro_batch": 16, "batch_size": 16}}, "must be below train.batch_size"),
    ({"train": {"micro_batch": 9, "batch_size": 8}}, "must be below train.batch_size"),
])
def test_a_fixed_micro_batch_is_refused_where_it_cannot_hold(settings, message):
    from fedpilot.config import parse_config
    from fedpilot.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config(settings)


@pytest.mark.parametrize(("batch", "smallest", "sizes"), [(16, 1, [16, 8, 4, 2, 1]), (16, 4, [16, 8, 4]), (16, 3, [16, 8, 4, 3]), (5, 1, [5, 2, 1]), (16, 16, [16])])
def test_the_planner_tries_halvings_down_to_the_smallest_micro_batch(batch, smallest, sizes):
    from fedpilot.planning.checkpointing import micro_batch_sizes

    assert micro_batch_sizes(batch, smallest) == sizes


def test_planned_micro_batches_stay_at_or_above_the_runs_micro_batch(tmp_path, capsys):
    """With train.micro_batch set, fedpilot's planned micro-batches choose between the whole batch and it: never
    smaller, and a client that keeps the whole batch says so with the batch's rows (not 0, the run's micro-batch)."""
    from conftest import FAST

    plans = {}
    for name, micro in (("free", 0), ("floored", 4)):
        config = {**FAST, "strategy": "fedpilot", "strategy_options": {"micro_batching": "planned"}, "train": {**FAST["train"], "micro_batch": micro}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        assert main(["plan", "--config", str(tmp_path / f"{name}.yaml"), "--json"]) == 0
        plans[name] = {c["cid"]: c for c in json.loads(capsys.readouterr().out)["clients"]}
    batch = FAST["train"]["batch_size"]
    assert any(0 < c["micro_batch"] < 4 for c in plans["free"].values())  # the budgets push some client below 4 rows
    for cid, client in plans["floored"].items():
        assert 4 <= client["micro_batch"] <= batch and client["predicted_bytes"] <= client["budget_bytes"]
        if plans["free"][cid]["micro_batch"] in (0, batch):
            assert client["micro_batch"] == batch and client["modules"] == plans["free"][cid]["modules"]
    # and a run trains so: every client at its planned micro-batch, its record priced at it, every peak within budget
    assert main(["run", "--config", str(tmp_path / "floored.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["budget_violations"] == []
    for record in (c for r in results["rounds"] for c in r["clients"]):
        assert 4 <= record["micro_batch"] <= batch and record["predicted_bytes"] <= record["budget_bytes"]
        assert record["peak_bytes"] <= record["budget_bytes"]
    scoring = [c for r in results["rounds"] for c in r["scoring"]]  # scored at micro-batches of 4: within budget too
    assert {c["cid"] for c in scoring} == {c["cid"] for c in results["clients"]}
    assert all(c["peak_bytes"] <= c["budget_bytes"] for c in scoring)
