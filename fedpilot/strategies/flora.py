"""FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank
Adaptations", NeurIPS 2024, arXiv 2409.05976).

Defining rule: stacking. The server stacks the clients' adapters, A_k as rows and p_k B_k as
columns, so that the stacked product is exactly the weighted sum of the clients' products, for any
mix of ranks:

    B_stack = [p_1 B_1 | ... | p_K B_K],   A_stack = [A_1; ...; A_K],   B_stack A_stack = sum_k p_k B_k A_k

The stacked update is merged into the frozen weight, D <- D + s * B_stack A_stack (s = alpha / rank,
p_k = n_k / sum n), and every client starts the next round from a fresh adapter: A drawn as PEFT
initialises it (Kaiming-uniform, bound 1 / sqrt(d_in)), seeded by (run seed, round), and B = 0, so
the fresh adapter adds nothing until trained. The merge / re-initialisation details are inferred
(the literature note marks them so); here every client trains every module at the global rank, so
it is memory-unaware (``Capabilities(memory_aware=False)``). The head is the plain sample-weighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.aggregation_utils import merge_keys, pair_senders
from fedpilot.strategies.base import Capabilities, ClientUpdate, derived_seed
from fedpilot.strategies.fedavg import FedAvg


def stack(updates: Sequence[ClientUpdate], a_key: str, b_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(B_stack, A_stack) in float64: the clients' p_k B_k side by side, their A_k one under the other."""
    total = float(sum(u.num_samples for u in updates))
    b_stack = np.concatenate([(u.num_samples / total) * u.tensors[b_key].astype(np.float64) for u in updates], axis=1)
    a_stack = np.concatenate([u.tensors[a_key].astype(np.float64) for u in updates], axis=0)
    return b_stack, a_stack


@STRATEGIES.register("flora")
class FLoRA(FedAvg):
    capabilities = Capabilities(
        memory_aware=False, per_client_assignment=False, rank_heterogeneous=False, base_deltas=True, payload="lora+base_delta"
    )

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        result = super().aggregate_train(server_round, global_tensors, updates)  # the head's mean (A, B replaced below)
        rng = np.random.default_rng(derived_seed(self.context.seed, server_round, 0xF10A))
        for module in self.context.modules:
            a_key, b_key, d_key = merge_keys(module)
            senders = pair_senders(updates, a_key, b_key)
            if not senders:
                result[a_key], result[b_key] = global_tensors[a_key].copy(), global_tensors[b_key].copy()
                continue
            b_stack, a_stack = stack(senders, a_key, b_key)
            merged = global_tensors[d_key].astype(np.float64) + self.context.scaling * (b_stack @ a_stack)
            result[d_key] = merged.astype(global_tensors[d_key].dtype)
            rank, d_in = global_tensors[a_key].shape
            bound = 1.0 / np.sqrt(d_in)
            result[a_key] = rng.uniform(-bound, bound, size=(rank, d_in)).astype(global_tensors[a_key].dtype)
            result[b_key] = np.zeros_like(global_tensors[b_key])
        return result
