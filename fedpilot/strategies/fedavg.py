"""FedAvg on full LoRA (McMahan et al., AISTATS 2017): every client trains every module.

The memory-unaware reference: it ignores client budgets, so on heterogeneous clients it shows what
would happen if every device could afford full LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.models import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import ClientInfo, ClientUpdate, Strategy
from fedpilot.strategies.strategy_utils import sample_weighted_average


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    def configure_train(
        self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict
    ) -> dict[int, list[str]]:
        return {client.cid: list(self.context.modules) for client in clients}

    def aggregate_train(
        self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]
    ) -> TensorDict:
        return sample_weighted_average(global_tensors, updates)
