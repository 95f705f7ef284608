"""Fed-pilot planning with an additive memory model: the knapsack ignores the position term
(activation of the lowest trained layer), as a plain per-module knapsack would. The allocations
then overrun the budgets, which the run records as measured violations."""

from __future__ import annotations

from fedpilot.memory.costmodel import CostModel
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.fedpilot import FedPilot


@STRATEGIES.register("fedpilot-additive")
class FedPilotAdditive(FedPilot):
    def allocation_cost_model(self) -> CostModel:
        true = self.context.cost_model
        return CostModel(true.fixed, tuple(0 for _ in true.activation), true.module, source="additive", settings=true.settings)
