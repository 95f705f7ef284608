"""Fed-pilot planning with an additive memory model: the knapsack ignores the position term
(activation of the lowest trained layer), as a plain per-module knapsack would. The allocations
then overrun the budgets, which the run records as measured violations."""

from __future__ import annotations

from fedpilot.planning.costmodel import CostModel
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Capabilities, ClientInfo
from fedpilot.strategies.fedpilot import FedPilot


@STRATEGIES.register("fedpilot-additive")
class FedPilotAdditive(FedPilot):
    # memory-unaware: it plans with the wrong cost model on purpose
    capabilities = Capabilities(memory_aware=False, per_client_assignment=True, rank_heterogeneous=False)

    def allocation_cost_model(self, client: ClientInfo) -> CostModel:
        return super().allocation_cost_model(client).without_position()
