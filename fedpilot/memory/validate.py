"""Predictions against measurement: the check behind benchmarks/memory_model.py and its unit test."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from fedpilot.data.split import TensorSplit
from fedpilot.memory.calibrate import measure_peak
from fedpilot.planning.costmodel import CostModel
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions


def random_module_sets(modules: Sequence[str], count: int, seed: int) -> list[list[str]]:
    """``count`` distinct non-empty random subsets, of every size, in the model's module order."""
    rng = random.Random(seed)
    chosen: list[list[str]] = []
    while len(chosen) < count:
        picked = set(rng.sample(list(modules), rng.randint(1, len(modules))))
        subset = [m for m in modules if m in picked]
        if subset not in chosen:
            chosen.append(subset)
    return chosen


def compare_predictions(
    model: LoraModel,
    batch: TensorSplit,
    instructions: TrainInstructions,
    sets: Sequence[Sequence[str]],
    cost_models: Mapping[str, CostModel],
    progress: bool = False,
) -> list[dict[str, object]]:
    """For each set: measured peak bytes, and each cost model's prediction and relative error."""
    rows = []
    for modules in tqdm(sets, desc="measuring trainable sets", unit="set", leave=False, disable=not progress):
        measured = measure_peak(model, modules, batch, instructions)
        row: dict[str, object] = {"modules": list(modules), "measured": measured}
        for name, cost_model in cost_models.items():
            predicted = cost_model.cost(modules)
            row[name] = predicted
            row[f"{name}_error"] = abs(predicted - measured) / measured
        rows.append(row)
    return rows
