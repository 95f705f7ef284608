"""``fedpilot solve``: the exact allocator on a problem read as JSON from stdin.

Input:  {"budget_bytes": int, "fixed_bytes": int, "activation_bytes": [int per layer],
         "modules": [{"name": str, "layer": int, "bytes": int, "value": float}, ...]}
Output: {"modules": [names], "predicted_bytes": int, "value": float, "solve_ms": float}
Exit 1 with one line when nothing fits; exit 2 with one line for malformed input.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from fedpilot.core.errors import FedpilotError
from fedpilot.core.settings import StrictModel, describe_error
from fedpilot.core.sizes import mib
from fedpilot.planning.allocation import Allocation, Item, Problem, solve


class NothingFits(FedpilotError):
    exit_code = 1


class ModuleSpec(StrictModel):
    name: str = Field(min_length=1)
    layer: int = Field(ge=0)
    bytes: int = Field(ge=0, strict=True)
    value: float = Field(ge=0)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value


class ProblemSpec(StrictModel):
    budget_bytes: int = Field(ge=0, strict=True)
    fixed_bytes: int = Field(ge=0, strict=True)
    activation_bytes: list[int] = Field(min_length=1)
    modules: list[ModuleSpec] = Field(min_length=1)

    @field_validator("activation_bytes")
    @classmethod
    def _non_negative(cls, values: list[int]) -> list[int]:
        if any(v < 0 for v in values):
            raise ValueError("activation bytes must be >= 0")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> ProblemSpec:
        names = [m.name for m in self.modules]
        if len(set(names)) != len(names):
            duplicate = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"module name {duplicate!r} appears twice; names must be unique")
        for i, m in enumerate(self.modules):
            if m.layer >= len(self.activation_bytes):
                raise ValueError(
                    f"modules[{i}].layer is {m.layer} but activation_bytes has {len(self.activation_bytes)} layers"
                )
        return self

    def problem(self) -> Problem:
        items = [Item(m.name, m.layer, m.bytes, m.value) for m in self.modules]
        return Problem.from_items(self.budget_bytes, self.fixed_bytes, self.activation_bytes, items)


def parse_problem(text: str) -> Problem:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise FedpilotError(f"input is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(data, dict):
        raise FedpilotError(f"input must be a JSON object, got {type(data).__name__}")
    try:
        return ProblemSpec.model_validate(data).problem()
    except ValidationError as err:
        raise FedpilotError(f"input: {describe_error(err.errors()[0])}") from None


def solve_text(text: str) -> dict[str, Any]:
    problem = parse_problem(text)
    allocation: Allocation | None = solve(problem)
    if allocation is None:
        name, cost = problem.cost_model.cheapest()
        raise NothingFits(
            f"nothing fits in {problem.budget_bytes} bytes ({mib(problem.budget_bytes):.1f} MiB): "
            f"the cheapest trainable set, {name}, costs {cost} bytes ({mib(cost):.1f} MiB)"
        )
    return {
        "modules": allocation.modules,
        "predicted_bytes": allocation.predicted_bytes,
        "value": allocation.value,
        "solve_ms": allocation.solve_ms,
    }
