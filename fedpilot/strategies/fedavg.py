"""FedAvg on full LoRA (McMahan et al., AISTATS 2017): every client trains every module, and each
tensor becomes the sample-weighted mean of the clients' tensors.

Memory-unaware: it ignores client budgets (``Capabilities(memory_aware=False)``), so on heterogeneous clients it
shows what would happen if every device could afford full LoRA; overruns are recorded as violations.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.aggregation_utils import sample_weighted_average
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, ClientUpdate, Strategy


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    capabilities = Capabilities(memory_aware=False, per_client_assignment=False, rank_heterogeneous=False)

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        return {client.cid: Assignment(tuple(self.context.modules)) for client in clients}

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        return sample_weighted_average(global_tensors, updates)
