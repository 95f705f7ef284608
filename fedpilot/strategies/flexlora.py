"""FlexLoRA: heterogeneous LoRA ranks, aggregated as full-size products and redistributed by truncated
SVD (Bai, Chen, Qian, Yao, Li, "Federated Fine-tuning of Large Language Models under Heterogeneous
Tasks and Client Resources", NeurIPS 2024, arXiv 2402.11505)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedpilot.core.keys import LORA_A, LORA_B, tensor_key
from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, ClientUpdate
from fedpilot.strategies.fedavg import FedAvg
from fedpilot.strategies.rank_utils import (
    able_clients,
    average_products,
    best_rank_factors,
    budget_rank,
    check_able,
    factors_from_svd,
    head_only,
    lora_pair,
    product,
    svd,
    truncate,
    uniform_ranks,
)


@STRATEGIES.register("flexlora")
class FlexLoRA(FedAvg):
    """FlexLoRA (Bai et al., NeurIPS 2024, arXiv 2402.11505): clients train LoRA at heterogeneous
    ranks; the server averages the full-size products and hands each client the best low-rank
    factorisation of the average at its own rank.

    Rank (memory-aware, ``Capabilities(memory_aware=True)``, chosen as in HetLoRA): r_k is the largest r <= R
    (the global rank) with ``cost_model.cost(all modules, {m: r}) <= usable(budget_k)``. A client
    for which no r >= 1 fits sits out (no assignment, never over budget); sampling draws among the
    clients that fit, and ``check_budgets`` fails only if none does.

    Aggregation. Per module m, over the clients K_m that trained it (n_k: their sample counts),

        W_m = sum_{k in K_m} n_k B_{k,m} A_{k,m} / sum_{k in K_m} n_k        (dense, float64)
        W_m = U S V^T (singular values descending)
        B_m <- U_R sqrt(S_R),   A_m <- sqrt(S_R) V_R^T

    so the global adapter is the best rank-R approximation of W_m (Eckart-Young). Modules nobody
    trained keep their tensors; the head is FedAvg's sample-weighted mean.

    Redistribution. A client of rank r_k < R receives, per module, the best rank-r_k factorisation
    of W_m, ``(U_{r_k} sqrt(S_{r_k}), sqrt(S_{r_k}) V_{r_k}^T)``; it is computed from the global
    product B_m A_m, whose leading r_k singular triplets are W_m's, so no W_m is stored. A client
    of rank R receives the global adapter as it is (already W_m's best rank-R factorisation).
    Where B_m A_m = 0 (before any round, or a module never trained) every factorisation with a zero
    product is optimal, and the client gets the global tensors truncated to r_k: the SVD's would be
    A = 0 and B = 0, which no gradient can move, while the truncation keeps LoRA's initialisation
    (random A, zero B). Stateless.
    """

    capabilities = Capabilities(memory_aware=True, per_client_assignment=False, rank_heterogeneous=True, payload="products")

    def check_budgets(self, clients: Sequence[ClientInfo]) -> None:
        check_able(self.context, clients, "flexlora")

    def sample(self, server_round: int, clients: Sequence[ClientInfo]) -> list[ClientInfo]:
        return super().sample(server_round, able_clients(self.context, clients))

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        modules = tuple(self.context.modules)
        plan: dict[int, Assignment] = {}
        decompositions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}  # one SVD per module per round
        for client in clients:
            rank = budget_rank(self.context, client)
            if rank is None:
                continue
            ranks = uniform_ranks(modules, rank, self.context.rank)
            payload = self.redistribute(global_tensors, rank, decompositions) if ranks else None
            plan[client.cid] = Assignment(modules, ranks, tensors=payload)
        return plan

    def redistribute(
        self, global_tensors: TensorDict, rank: int, decompositions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None]
    ) -> TensorDict:
        """The whole adapter with every module replaced by the best rank-``rank`` factorisation of its global product."""
        payload = dict(global_tensors)
        for module in self.context.modules:
            a_key, b_key = tensor_key(module, LORA_A), tensor_key(module, LORA_B)
            if module not in decompositions:
                dense = product(global_tensors[b_key], global_tensors[a_key])
                decompositions[module] = svd(dense) if np.any(dense) else None
            decomposition = decompositions[module]
            if decomposition is None:  # zero product: keep the initialisation, truncated
                payload[a_key] = truncate(a_key, global_tensors[a_key], rank)
                payload[b_key] = truncate(b_key, global_tensors[b_key], rank)
                continue
            b, a = factors_from_svd(*decomposition, rank)
            payload[a_key] = np.ascontiguousarray(a, dtype=global_tensors[a_key].dtype)
            payload[b_key] = np.ascontiguousarray(b, dtype=global_tensors[b_key].dtype)
        return payload

    def average_product(self, module: str, updates: Sequence[ClientUpdate]) -> np.ndarray | None:
        """W_m: the sample-weighted mean of B_k A_k over the clients that trained ``module`` (None: nobody did)."""
        senders = [(u, pair) for u in updates if (pair := lora_pair(u, module)) is not None]
        if not senders:
            return None
        return average_products([pair for _, pair in senders], [u.num_samples for u, _ in senders])

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        result = super().aggregate_train(server_round, global_tensors, [head_only(u) for u in updates])
        for module in self.context.modules:
            average = self.average_product(module, updates)
            if average is None:
                continue
            a_key, b_key = tensor_key(module, LORA_A), tensor_key(module, LORA_B)
            b, a = best_rank_factors(average, self.context.rank)
            result[a_key] = np.ascontiguousarray(a, dtype=global_tensors[a_key].dtype)
            result[b_key] = np.ascontiguousarray(b, dtype=global_tensors[b_key].dtype)
        return result
