"""Activation checkpointing as a planned option: the same step, its memory priced and measured, the
solver's choice exact, and a federation round that buys depth with it within every budget."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from checkpoints import tiny_checkpoint_factory  # noqa: F401 (a fixture)
from fedpilot.config import Config, FederationSettings
from fedpilot.core.errors import FedpilotError
from fedpilot.data.split import SplitData
from fedpilot.memory.calibrate import load_or_calibrate, measure_peak
from fedpilot.memory.validate import random_module_sets
from fedpilot.planning.allocation import Problem, solve
from fedpilot.planning.checkpointing import solve_planned
from fedpilot.planning.costmodel import CostModel, analytic_layers, lora_module_bytes, lora_param_bytes
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import batch_loss
from fedpilot.simulation import run_simulation



@pytest.fixture(scope="module")
def checkpointed_cost_model(fast_config: Config, fast_data: SplitData, fast_model: LoraModel) -> CostModel:
    """FAST's cost model calibrated with the checkpointed terms (as a run with checkpointing: planned is)."""
    batch = fast_data.train.subset(np.arange(fast_config.train.batch_size))
    return load_or_calibrate(fast_model, batch, TrainInstructions.from_settings(fast_config.train, fast_config.seed), checkpointing=True)[0]

# -- the runtime: the same step ---------------------------------------------------------------------------
def test_a_checkpointed_step_has_the_plain_steps_output_and_gradients(fast_model: LoraModel, fast_data: SplitData) -> None:
    model, trained = fast_model, ["1.query", "2.value", "3.query"]
    saved = model.state()
    rows = torch.arange(8)

    def step(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.set_trainable(trained)
        model.peft.train()  # LoRA and base dropout on: the recompute must draw the same masks
        torch.manual_seed(3)
        with model.fold_frozen(trained), model.checkpointed(trained, checkpointing) as lowest:
            assert lowest == (1 if checkpointing else None)
            swapped = ["forward" in vars(block) for block in model.blocks()]
            assert swapped == [checkpointing and layer >= 1 for layer in range(model.num_layers)]
            loss = batch_loss(model, fast_data.train, rows)
            loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in model.params.items() if p.grad is not None}
        model.set_trainable([])
        return loss.detach(), grads

    try:
        plain_loss, plain = step(False)
        loss, grads = step(True)
    finally:
        model.load_state(saved)
    assert not any("forward" in vars(block) for block in model.blocks())  # restored
    assert set(grads) == set(plain) and len(plain) > 2 * 3  # the modules' A and B, and the head
    assert torch.allclose(loss, plain_loss, atol=1e-6)
    for key in plain:
        assert torch.allclose(grads[key], plain[key], atol=1e-6), key


# -- the cost model -----------------------------------------------------------------------------------------
def test_calibrated_checkpointed_predictions_are_within_5_percent(fast_model: LoraModel, fast_data: SplitData, fast_config: Config,
                                                                  checkpointed_cost_model: CostModel) -> None:
    batch = fast_data.train.subset(np.arange(fast_config.train.batch_size))
    instructions = TrainInstructions.from_settings(fast_config.train, fast_config.seed)
    assert checkpointed_cost_model.prices_checkpointing
    for modules in random_module_sets(fast_model.modules, 3, seed=2):
        measured = measure_peak(fast_model, modules, batch, instructions, checkpointing=True)
        predicted = checkpointed_cost_model.cost(modules, checkpointing=True)
        assert abs(predicted - measured) / measured <= 0.05, (modules, predicted, measured)
    everything = list(fast_model.modules)
    assert checkpointed_cost_model.cost(everything, checkpointing=True) < checkpointed_cost_model.cost(everything)  # it saves memory


def test_a_cost_model_without_checkpointed_terms_loads_and_refuses_to_price_it(checkpointed_cost_model: CostModel) -> None:
    again = CostModel.from_dict(checkpointed_cost_model.to_dict())
    assert again == checkpointed_cost_model and again.prices_checkpointing
    old = {k: v for k, v in checkpointed_cost_model.to_dict().items() if not k.endswith("_checkpointed")}
    loaded = CostModel.from_dict(old)
    assert not loaded.prices_checkpointing and loaded.cost(list(loaded.module)) == checkpointed_cost_model.cost(list(loaded.module))
    with pytest.raises(FedpilotError, match="cannot price activation checkpointing") as error:
        loaded.cost(["0.query"], checkpointing=True)
    assert "\n" not in str(error.value)
    with pytest.raises(FedpilotError, match="cannot price activation checkpointing"):
        solve_planned(Problem(10**9, loaded, {m: 1.0 for m in loaded.module}))



def test_a_run_that_does_not_plan_checkpointing_calibrates_without_it(fast_cost_model: CostModel, checkpointed_cost_model: CostModel) -> None:
    """The checkpointed probes are paid for only when asked: a plain calibration has no checkpointed terms (and its
    own cache entry), and its plain terms are those of the calibration with them."""
    assert not fast_cost_model.prices_checkpointing and checkpointed_cost_model.prices_checkpointing
    assert fast_cost_model.settings != checkpointed_cost_model.settings
    plain = ("fixed", "activation", "module", "layer", "rank", "rank_bytes")
    assert [getattr(fast_cost_model, k) for k in plain] == [getattr(checkpointed_cost_model, k) for k in plain]


def test_a_config_that_plans_checkpointing_is_calibrated_with_it(fast_config: Config) -> None:
    from fedpilot.federation import plans_checkpointing

    assert not plans_checkpointing(fast_config)
    assert plans_checkpointing(fast_config.model_copy(update={"strategy_options": {"checkpointing": "planned"}}))
    assert not plans_checkpointing(fast_config.model_copy(update={"strategy": "fedavg"}))

def test_the_analytic_model_prices_checkpointing_from_each_layers_input() -> None:
    shapes, tokens, rank, per_layer, layer_input = {"q": (32, 32), "f": (32, 64)}, 128, 8, 50_000, 16_384
    model = analytic_layers(1000, per_layer, 3, shapes, ["q", "f"], rank, tokens, "adamw", {}, layer_input)
    recompute = per_layer + 4 * tokens * (32 + rank) * 2
    assert model.activation_checkpointed == tuple((3 - l) * layer_input + recompute for l in range(3))
    assert model.module_checkpointed["1.f"] == lora_param_bytes(32, 64, rank, "adamw") == 4 * rank * 96 * 4
    assert model.module["1.f"] == lora_module_bytes(32, 64, rank, tokens, "adamw")
    assert not analytic_layers(1000, per_layer, 3, shapes, ["q"], rank, tokens, "adamw", {}).prices_checkpointing


# -- the solver ---------------------------------------------------------------------------------------------
def random_checkpointed_problem(seed: int) -> Problem:
    """Up to 7 modules over 3 layers; checkpointed terms drawn independently (cheaper or dearer)."""
    rng = random.Random(seed)
    layers, count = 3, rng.randint(1, 7)
    names = [f"{rng.randrange(layers)}.m{i}" for i in range(count)]
    cost_model = CostModel(
        fixed=rng.randint(0, 50),
        activation=tuple(sorted((rng.randint(0, 60) for _ in range(layers)), reverse=rng.random() < 0.8)),
        module={m: rng.randint(1, 30) for m in names},
        activation_checkpointed=tuple(rng.randint(0, 60) for _ in range(layers)),
        module_checkpointed={m: rng.randint(0, 30) for m in names},
        source="input",
    )
    values = {m: float(rng.choice([0, 1, 2, 3, rng.random()])) for m in names}
    return Problem(rng.randint(0, 250), cost_model, values)


def brute_force(problem: Problem) -> tuple[float, bool] | None:
    """The best value over every non-empty set x {off, on}, and whether only checkpointing reaches it."""
    best: dict[bool, float] = {}
    names = list(problem.cost_model.module)
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            for checkpointing in (False, True):
                if problem.cost_model.cost(subset, checkpointing=checkpointing) <= problem.budget_bytes:
                    value = sum(problem.values[m] for m in subset)
                    best[checkpointing] = max(best.get(checkpointing, -math.inf), value)
    if not best:
        return None
    top = max(best.values())
    return top, best.get(False, -math.inf) < top


@pytest.mark.parametrize("seed", range(300))
def test_the_planned_optimum_is_the_best_over_sets_and_checkpointing(seed: int) -> None:
    problem = random_checkpointed_problem(seed)
    expected, allocation = brute_force(problem), solve_planned(problem)
    if expected is None:
        assert allocation is None
        return
    value, only_checkpointed = expected
    assert allocation is not None and allocation.optimal
    assert math.isclose(allocation.value, value, rel_tol=1e-12, abs_tol=1e-12)
    assert allocation.checkpointing == only_checkpointed  # a tie keeps checkpointing off
    assert allocation.predicted_bytes == problem.cost_model.cost(allocation.modules, checkpointing=allocation.checkpointing)
    assert allocation.predicted_bytes <= problem.budget_bytes


def test_with_checkpointing_off_the_solver_is_unchanged() -> None:
    for seed in range(50):
        problem = random_checkpointed_problem(seed)
        plain = solve(problem)
        assert plain is None or not plain.checkpointing


# -- a federation round ----------------------------------------------------------------------------------
def test_a_planned_round_checkpoints_to_train_deeper_within_budget(fast_config: Config, checkpointed_cost_model: CostModel, tmp_path) -> None:
    """Clients 0 and 1 fit full LoRA only checkpointed (and no module below layer 2 without it): they checkpoint
    and reach layer 0; client 2 fits full LoRA plainly and keeps checkpointing off (the faster step). One round,
    one local step; every measured peak within its budget."""
    margin = FederationSettings().memory_margin
    cost_model, everything = checkpointed_cost_model, list(checkpointed_cost_model.module)
    tight = math.ceil(cost_model.cost(everything, checkpointing=True) / (1 - margin)) + 1
    roomy = math.ceil(cost_model.cost(everything) / (1 - margin)) + 1
    usable = int(tight * (1 - margin))
    # the lowest layer any set reaches without checkpointing under the tight budget
    plain_lowest = min(cost_model.layer[m] for m in everything if cost_model.cost([m]) <= usable)
    assert plain_lowest > 0
    federation = fast_config.federation.model_copy(update={"budgets": (tight, tight, roomy), "rounds": 1})
    train = fast_config.train.model_copy(update={"local_steps": 1})
    config = fast_config.model_copy(update={"federation": federation, "train": train, "strategy_options": {"checkpointing": "planned"}})
    result = run_simulation(config, tmp_path / "run", progress=False)
    assert result.results["budget_violations"] == []
    clients = {c["cid"]: c for c in result.rounds[-1]["clients"]}
    assert {cid for cid, c in clients.items() if c.get("checkpointing")} == {0, 1}
    for cid in (0, 1):
        c = clients[cid]
        assert min(cost_model.layer[m] for m in c["modules"]) < plain_lowest
        assert c["peak_bytes"] <= c["budget_bytes"]
        assert c["predicted_bytes"] == cost_model.cost(c["modules"], checkpointing=True)
        assert abs(c["predicted_bytes"] - c["peak_bytes"]) / c["peak_bytes"] <= 0.05
    assert "checkpointing" not in clients[2] and sorted(clients[2]["modules"]) == sorted(everything)


def test_fedpilot_rank_refuses_to_plan_checkpointing() -> None:
    from fedpilot.strategies.fedpilot_rank import FedPilotRankOptions

    with pytest.raises(ValueError, match="does not plan activation checkpointing"):
        FedPilotRankOptions(checkpointing="planned")


@pytest.mark.parametrize("model_type", ["llama", "distilbert"])
def test_checkpointing_other_families_keeps_outputs_and_gradients(model_type: str, tiny_checkpoint_factory) -> None:
    """A decoder (rotary embeddings passed to each block as keyword arguments) and another encoder layout."""
    from fedpilot.config import parse_config

    config = parse_config({"model": {"name": str(tiny_checkpoint_factory(model_type))}})
    model = LoraModel(config.model, num_labels=3, seed=0)
    trained = [m for m in model.modules if m.startswith("1.")]
    ids = torch.randint(5, 40, (2, 12), generator=torch.Generator().manual_seed(0))

    def step(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.set_trainable(trained)
        model.peft.train()
        torch.manual_seed(3)
        with model.fold_frozen(trained), model.checkpointed(trained, checkpointing):
            assert ["forward" in vars(block) for block in model.blocks()] == [checkpointing and i >= 1 for i in range(model.num_layers)]
            out = model.peft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            out.square().mean().backward()
        grads = {k: p.grad.detach().clone() for k, p in model.params.items() if p.grad is not None}
        model.set_trainable([])
        return out.detach(), grads

    plain_out, plain = step(False)
    out, grads = step(True)
    assert torch.allclose(out, plain_out, atol=1e-6) and set(grads) == set(plain) and plain
    for key in plain:
        assert torch.allclose(grads[key], plain[key], atol=1e-6), key


def test_nesting_and_checkpointing_together_are_refused_in_one_line() -> None:
    from fedpilot.strategies import STRATEGIES

    with pytest.raises(ValueError, match="use one of nesting: round and checkpointing: planned"):
        STRATEGIES["fedpilot"].Options(nesting="round", checkpointing="planned")


def test_a_restricted_problem_keeps_the_checkpointed_price_of_each_allowed_set(checkpointed_cost_model: CostModel) -> None:
    from fedpilot.planning.nesting import restrict

    modules = list(checkpointed_cost_model.module)
    allowed = modules[len(modules) // 2:]
    problem = Problem(10**9, checkpointed_cost_model, {m: 1.0 for m in modules})
    restricted = restrict(problem, allowed)
    assert set(restricted.cost_model.module) == set(restricted.cost_model.module_checkpointed) == set(allowed)
    for subset in (allowed, allowed[:1], allowed[-2:]):
        assert restricted.cost_model.cost(subset, checkpointing=True) == checkpointed_cost_model.cost(subset, checkpointing=True)


def test_fedpilot_plan_shows_who_checkpoints_and_prices_it_so(fast_config: Config, checkpointed_cost_model: CostModel) -> None:
    from fedpilot.cli.plan import make_plan, render_plan

    margin = FederationSettings().memory_margin
    everything = list(checkpointed_cost_model.module)
    tight = math.ceil(checkpointed_cost_model.cost(everything, checkpointing=True) / (1 - margin)) + 1
    roomy = math.ceil(checkpointed_cost_model.cost(everything) / (1 - margin)) + 1
    federation = fast_config.federation.model_copy(update={"budgets": (tight, tight, roomy)})
    config = fast_config.model_copy(update={"federation": federation, "strategy_options": {"checkpointing": "planned"}})
    plan = make_plan(config, progress=False)
    assert [c["checkpointing"] for c in plan["clients"]] == [True, True, False]
    for client in plan["clients"]:
        assert client["predicted_bytes"] == checkpointed_cost_model.cost(client["modules"], checkpointing=client["checkpointing"])
        assert client["predicted_bytes"] <= client["budget_bytes"]
    lines = render_plan(plan).splitlines()
    assert next(line for line in lines if line.startswith("ckpt")).split() == ["ckpt", "yes", "yes", "no"]
    assert "checkpointed where ckpt says yes" in lines[-1]
    plain = render_plan({**plan, "clients": [{**c, "checkpointing": False} for c in plan["clients"]]}).splitlines()
    assert not any(line.startswith("ckpt") for line in plain) and "checkpointed" not in plain[-1]


# -- fedpilot solve: the JSON schema prices checkpointing ------------------------------------------------
def problem_json(problem: Problem) -> dict:
    cm = problem.cost_model
    return {
        "budget_bytes": problem.budget_bytes, "fixed_bytes": cm.fixed, "activation_bytes": list(cm.activation),
        "checkpointed_activation_bytes": list(cm.activation_checkpointed),
        "modules": [{"name": m, "layer": cm.layer[m], "bytes": cm.module[m], "checkpointed_bytes": cm.module_checkpointed[m],
                     "value": problem.values[m]} for m in cm.module],
    }


@pytest.mark.parametrize("seed", range(60))
def test_fedpilot_solve_reads_checkpointing_and_answers_the_brute_force_optimum(seed: int) -> None:
    import json

    from fedpilot.cli.solve import EXIT_NOTHING_FITS, EXIT_OPTIMAL, respond

    problem = random_checkpointed_problem(seed)
    code, out, err = respond(json.dumps(problem_json(problem)))
    expected = brute_force(problem)
    if expected is None:
        assert code == EXIT_NOTHING_FITS and "nothing fits" in err
        return
    assert code == EXIT_OPTIMAL, err
    answer = json.loads(out)
    value, only_checkpointed = expected
    assert math.isclose(answer["value"], value, rel_tol=1e-12, abs_tol=1e-12)
    assert answer["checkpointing"] is only_checkpointed
    assert answer["predicted_bytes"] == problem.cost_model.cost(answer["modules"], checkpointing=answer["checkpointing"]) <= problem.budget_bytes


def test_fedpilot_solve_without_checkpointing_keys_answers_as_before_and_refuses_half_a_schema() -> None:
    import json

    from fedpilot.cli.solve import EXIT_BAD_INPUT, respond

    data = problem_json(random_checkpointed_problem(3))
    plain = {k: v for k, v in data.items() if k != "checkpointed_activation_bytes"}
    plain["modules"] = [{k: v for k, v in m.items() if k != "checkpointed_bytes"} for m in data["modules"]]
    code, out, _ = respond(json.dumps(plain))
    assert code in (0, 1) and (code == 1 or "checkpointing" not in json.loads(out))
    cases = {
        "checkpointed_activation_bytes is missing": {k: v for k, v in data.items() if k != "checkpointed_activation_bytes"},
        "checkpointed_bytes": {**data, "modules": [{k: v for k, v in m.items() if k != "checkpointed_bytes"} for m in data["modules"]]},
        "give one per layer": {**data, "checkpointed_activation_bytes": data["checkpointed_activation_bytes"][:-1]},
        "cannot be solved together": {**data, "rank_options": [2, 4]},
    }
    for needle, bad in cases.items():
        code, out, err = respond(json.dumps(bad))
        assert code == EXIT_BAD_INPUT and out == "" and needle in err and "\n" not in err.strip(), (needle, err)
