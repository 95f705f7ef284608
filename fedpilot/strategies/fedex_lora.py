"""FedEx-LoRA (Singhal, Ponkshe, Vepakomma, "Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models", ACL 2025, arXiv 2410.09432).

Defining rule: average A and B as FedAvg does, and add the residual of that average to the frozen
weight, so that the global model's effective update is exactly the average of the clients':

    A <- sum_k p_k A_k,   B <- sum_k p_k B_k                                   (p_k = n_k / sum n)
    D <- D + s * ( sum_k p_k B_k A_k  -  B A )                                 (s = alpha / rank)

where D is the module's base delta (its frozen weight is W0 + D), so W0 + D + s B A equals the
sample-weighted mean of the clients' W0 + D + s B_k A_k. Averaging A and B alone (FedAvg) is not
exact: the mean of products is not the product of means.

Every client trains every module (like FedAvg): memory-unaware, ``Capabilities(memory_aware=False)``. The global
state holds a dense d_out x d_in delta per module, sent to every client each round (recorded in the
download bytes); the exported adapter comes with ``base_weights.safetensors`` (README).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.aggregation_utils import merge_keys, pair_senders
from fedpilot.strategies.base import Capabilities, ClientUpdate
from fedpilot.strategies.fedavg import FedAvg


def mean_product(updates: Sequence[ClientUpdate], a_key: str, b_key: str) -> np.ndarray:
    """``sum_k p_k B_k A_k`` in float64 over the clients that sent both factors (p_k by samples)."""
    total = float(sum(u.num_samples for u in updates))
    return sum((u.num_samples / total) * (u.tensors[b_key].astype(np.float64) @ u.tensors[a_key].astype(np.float64)) for u in updates)


@STRATEGIES.register("fedex-lora")
class FedExLoRA(FedAvg):
    capabilities = Capabilities(
        memory_aware=False, per_client_assignment=False, rank_heterogeneous=False, base_deltas=True, payload="lora+base_delta"
    )

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        result = super().aggregate_train(server_round, global_tensors, updates)  # the means of A, B and the head
        for module in self.context.modules:
            a_key, b_key, d_key = merge_keys(module)
            senders = pair_senders(updates, a_key, b_key)
            if not senders:
                continue
            residual = mean_product(senders, a_key, b_key) - result[b_key].astype(np.float64) @ result[a_key].astype(np.float64)
            delta = global_tensors[d_key].astype(np.float64) + self.context.scaling * residual
            result[d_key] = delta.astype(global_tensors[d_key].dtype)
        return result
