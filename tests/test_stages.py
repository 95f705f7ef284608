"""Stages within a layer: the cost model's stage terms by hand, the allocators exact over them (brute force),
and the calibrated stage terms against the measured peaks of their probes and of random sets."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from fedpilot.config import Config
from fedpilot.data.split import SplitData
from fedpilot.memory.calibrate import calibrate, measure_peak, target_stages
from fedpilot.memory.validate import compare_predictions, random_module_sets
from fedpilot.planning.allocation import Problem, solve
from fedpilot.planning.costmodel import CostModel
from fedpilot.planning.joint import rank_problem, solve_joint
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions

STAGED = CostModel(
    fixed=100,
    activation=(40, 10),
    module={"0.q": 5, "0.o": 3, "0.f": 7, "1.q": 5, "1.o": 3, "1.f": 7},
    stage={"0.q": 0, "0.o": 1, "0.f": 2, "1.q": 0, "1.o": 1, "1.f": 2},
    stage_extra=((9, 4, 0), (12, 2, 1)),
)


def test_a_set_pays_the_extra_of_its_lowest_layer_and_the_stage_of_its_lowest_module_there() -> None:
    assert STAGED.cost(["1.q"]) == 100 + 10 + 12 + 5
    assert STAGED.cost(["1.o", "1.f"]) == 100 + 10 + 2 + 3 + 7
    assert STAGED.cost(["1.q", "0.f"]) == 100 + 40 + 0 + 5 + 7  # layer 0 is the lowest: its stage decides
    assert STAGED.cost(["0.o", "1.q"]) == 100 + 40 + 4 + 3 + 5
    assert STAGED.cost(STAGED.module) == 100 + 40 + 9 + 30
    assert [STAGED.depth(m) for m in STAGED.module] == [0, 1, 2, 3, 4, 5]
    assert STAGED.depth_activation() == (49, 44, 40, 22, 12, 11)
    assert CostModel.from_dict(STAGED.to_dict()) == STAGED
    floored = CostModel(fixed=100, activation=(40, 10), module={"0.q": 5, "1.q": 5}, floor=120)
    assert floored.cost(["1.q"]) == 120 and floored.cost(["0.q"]) == 145 and floored.cost([]) == 120  # max(floor, terms)
    assert CostModel.from_dict(floored.to_dict()) == floored
    assert solve(Problem(119, floored, {"0.q": 1.0, "1.q": 1.0})) is None  # the forward pass alone does not fit
    plain = CostModel(fixed=100, activation=(40, 10), module={"0.q": 5, "1.q": 5})
    assert plain.stages == 1 and plain.depth_activation() == (40, 10) and plain.cost(["1.q"]) == 115
    assert STAGED.without_position().cost(["1.q"]) == 105  # the additive ablation drops the stage terms too


@pytest.mark.parametrize("broken, match", [
    ({"stage_extra": ((1, 2), (3,))}, "one row per layer"),
    ({"stage_extra": ((1, 2),)}, "one row per layer"),
    ({"stage": {"0.q": 2}, "stage_extra": ((0, 0), (0, 0))}, "outside its 2 stages"),
    ({"stage": {"9.q": 0}, "stage_extra": ((0,), (0,))}, "not a module"),
])
def test_broken_stage_terms_are_refused(broken: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CostModel(fixed=1, activation=(4, 2), module={"0.q": 1, "1.q": 1}, **broken)


def random_staged(seed: int) -> tuple[CostModel, dict[str, float], int]:
    rng = random.Random(seed)
    layers, stages = rng.randint(1, 3), rng.randint(1, 3)
    activation = sorted((rng.randint(0, 60) for _ in range(layers)), reverse=rng.random() < 0.7)
    modules = {f"{l}.t{t}": rng.randint(1, 25) for l in range(layers) for t in range(rng.randint(1, 3))}
    stage = {m: rng.randrange(stages) for m in modules}
    # signed extras (a later stage may store less than the layer terms) and, half the time, a forward floor
    extra = tuple(tuple(rng.randint(-10, 30) for _ in range(stages)) for _ in range(layers))
    fixed = rng.randint(0, 20)
    cm = CostModel(fixed=fixed, activation=tuple(activation), module=modules, stage=stage, stage_extra=extra,
                   rank=4, rank_bytes={m: rng.randint(0, b // 2) for m, b in modules.items()},
                   floor=rng.choice([0, rng.randint(fixed, fixed + 120)]))
    values = {m: rng.choice([0.0, 1.0, 2.0, rng.uniform(0, 5)]) for m in modules}
    return cm, values, rng.randint(cm.fixed, cm.full() + 10)


@pytest.mark.parametrize("seed", range(40))
def test_the_set_allocator_is_exact_over_staged_costs(seed: int) -> None:
    cm, values, budget = random_staged(seed)
    best = max((math.fsum(values[m] for m in s) for k in range(1, len(cm.module) + 1)
                for s in itertools.combinations(cm.module, k) if cm.cost(s) <= budget), default=None)
    answer = solve(Problem(budget, cm, values))
    if best is None:
        assert answer is None
        return
    assert answer is not None and cm.cost(answer.modules) == answer.predicted_bytes <= budget
    assert math.isclose(math.fsum(values[m] for m in answer.modules), best, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("seed", range(25))
def test_the_joint_allocator_is_exact_over_staged_costs(seed: int) -> None:
    cm, values, budget = random_staged(seed)
    modules = list(cm.module)[:5]
    rank_values = {m: {2: values[m] / 2, 4: values[m]} for m in modules}
    best = None
    for combo in itertools.product((0, 2, 4), repeat=len(modules)):
        ranks = {m: r for m, r in zip(modules, combo) if r}
        if ranks and cm.cost(ranks, ranks) <= budget:
            value = math.fsum(rank_values[m][r] for m, r in ranks.items())
            best = value if best is None else max(best, value)
    answer = solve_joint(rank_problem(budget, cm, rank_values))
    if best is None:
        assert answer is None
        return
    assert answer is not None and cm.cost(answer.ranks, answer.ranks) <= budget
    assert math.isclose(math.fsum(rank_values[m][r] for m, r in answer.ranks.items()), best, rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture(scope="module")
def six_targets(tiny_config: Config, tiny_data: SplitData):
    """MiniLM with LoRA on all six targets of the BERT family (four stages), on the tiny configuration's batch."""
    lora = tiny_config.model.lora.model_copy(update={"targets": ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")})
    model = LoraModel(tiny_config.model.model_copy(update={"lora": lora}), num_labels=len(tiny_data.label_names), seed=0)
    batch = tiny_data.train.subset(np.arange(tiny_config.train.batch_size))
    instructions = TrainInstructions.from_settings(tiny_config.train, seed=0)
    return model, batch, instructions, calibrate(model, batch, instructions)


def test_calibration_prices_every_probe_at_or_above_its_measured_peak(six_targets) -> None:
    model, batch, instructions, cm = six_targets
    assert target_stages(model) == {"query": 0, "key": 0, "value": 0, "attn_out": 1, "ffn_in": 2, "ffn_out": 3}
    assert cm.stages == 4 and min(row[0] for row in cm.stage_extra) >= 0  # stage 0 only ever adds
    for layer in range(model.num_layers):
        whole = [f"{layer}.{t}" for t in model.settings.lora.targets]
        assert cm.cost(whole) >= measure_peak(model, whole, batch, instructions), whole
        for stage, target in enumerate(("query", "attn_out", "ffn_in", "ffn_out")):
            single = [f"{layer}.{target}"]
            measured = measure_peak(model, single, batch, instructions)
            assert cm.cost(single) >= measured, single
            # a later stage's term is what its probe measured against the layer terms, either way; stage 0's when above
            if stage > 0 or cm.stage_extra[layer][stage] > 0:
                assert cm.cost(single) == measured, single
    assert any(row[0] > 0 for row in cm.stage_extra)  # the top layers' small sets store more than the layer terms say
    assert any(e < 0 for row in cm.stage_extra for e in row[1:])  # and a later stage's backward stops earlier


def test_calibrated_stages_stay_within_5_percent_on_random_sets(six_targets) -> None:
    model, batch, instructions, cm = six_targets
    rows = compare_predictions(model, batch, instructions, random_module_sets(model.modules, 8, seed=2), {"calibrated": cm})
    assert max(r["calibrated_error"] for r in rows) <= 0.05, rows
