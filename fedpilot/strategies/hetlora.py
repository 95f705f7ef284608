"""HetLoRA: heterogeneous LoRA ranks with truncation, rank self-pruning and sparsity-weighted
aggregation (Cho, Liu, Xu, Fahrezi, Joshi, "Heterogeneous LoRA for Federated Fine-tuning of On-Device
Foundation Models", EMNLP 2024, arXiv 2401.06432)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from fedpilot.core.keys import LORA_A, LORA_B, tensor_key
from fedpilot.core.settings import StrictModel
from fedpilot.core.tensors import TensorDict, squared_norm
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.aggregation_utils import weighted_mean
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, ClientUpdate, FederationContext
from fedpilot.strategies.fedavg import FedAvg
from fedpilot.strategies.rank_utils import (
    able_clients,
    budget_rank,
    check_able,
    head_only,
    lora_pair,
    product,
    truncate_adapter,
    uniform_ranks,
    zero_pad,
)


class HetLoRAOptions(StrictModel):
    decay: float = Field(0.99, gt=0, lt=1, description="gamma: a pruned client's rank becomes max(min_rank, floor(gamma * r_k))")
    prune_threshold: float = Field(0.1, ge=0, le=1, description="prune when the tail components carry less than this share of ||B_k A_k||_F")
    min_rank: int = Field(1, ge=1, description="self-pruning never takes a client's rank below this")


@STRATEGIES.register("hetlora")
class HetLoRA(FedAvg):
    """HetLoRA (Cho et al., EMNLP 2024, arXiv 2401.06432): each client trains every module at its own
    rank r_k <= R (the global rank); the server zero-pads and takes a norm-weighted mean.

    Rank (memory-aware, ``Capabilities(memory_aware=True)``): r_k = min(cap_k, b_k), where b_k is the largest
    r <= R with ``cost_model.cost(all modules, {m: r}) <= usable(budget_k)`` and cap_k is the rank
    self-pruning left (R at first). A client for which no r >= 1 fits sits out (no assignment; it is
    never planned over budget); sampling draws among the clients that fit, and ``check_budgets``
    fails only if no client fits at all.

    Distribution: the client receives the global adapter truncated to r_k (A_m[:r_k, :],
    B_m[:, :r_k] for every module; the head whole).

    Rank self-pruning. The paper's client adds a penalty on its last rank components during local
    training and prunes them when they become small. Clients here are plain trainers, so the server
    applies the pruning test to what the client sent (inferred; the penalty is not applied). With
    r' = max(min_rank, floor(gamma * r_k)) and the tail components r' .. r_k - 1,

        share_k = sqrt( sum_m ||B_{k,m}[:, r':] A_{k,m}[r':, :]||_F^2 / sum_m ||B_{k,m} A_{k,m}||_F^2 )

    and if share_k < prune_threshold then cap_k <- r' for the later rounds (the pruned tail is
    exactly the part tested). No pruning when r' = r_k or when every product is zero.

    Aggregation (sparsity-weighted). Per module m, over the clients K_m that trained it,

        p_{k,m} = ||B_{k,m} A_{k,m}||_F / sum_{j in K_m} ||B_{j,m} A_{j,m}||_F
        A_m <- sum_k p_{k,m} pad_R(A_{k,m}),   B_m <- sum_k p_{k,m} pad_R(B_{k,m})

    where pad_R appends zero rank components up to R. If every norm of a module is zero the
    weights fall back to n_k / sum_j n_j. Modules nobody trained keep their tensors; the head is
    FedAvg's sample-weighted mean. Per-client caps are the strategy's state.
    """

    Options = HetLoRAOptions
    capabilities = Capabilities(memory_aware=True, per_client_assignment=False, rank_heterogeneous=True)

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        super().__init__(context, options)
        self.caps: dict[int, int] = {}  # client -> the rank self-pruning left it (absent: the global rank)

    # -- ranks ---------------------------------------------------------------------------------------
    def check_budgets(self, clients: Sequence[ClientInfo]) -> None:
        check_able(self.context, clients, "hetlora")

    def sample(self, server_round: int, clients: Sequence[ClientInfo]) -> list[ClientInfo]:
        return super().sample(server_round, able_clients(self.context, clients))

    def client_rank(self, client: ClientInfo) -> int | None:
        """r_k = min(cap_k, largest rank that fits the budget); None: the client sits out."""
        fitting = budget_rank(self.context, client)
        return None if fitting is None else min(fitting, self.caps.get(client.cid, self.context.rank))

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        modules = tuple(self.context.modules)
        plan = {}
        for client in clients:
            rank = self.client_rank(client)
            if rank is None:
                continue
            ranks = uniform_ranks(modules, rank, self.context.rank)
            plan[client.cid] = Assignment(modules, ranks, tensors=truncate_adapter(global_tensors, ranks) if ranks else None)
        return plan

    # -- aggregation ---------------------------------------------------------------------------------
    def sparsity_weights(self, module: str, senders: Sequence[ClientUpdate]) -> list[float]:
        """p_{k,m} proportional to ||B_{k,m} A_{k,m}||_F (sample weights if all are zero)."""
        norms = [float(np.linalg.norm(product(*lora_pair(u, module)))) for u in senders]
        total = sum(norms)
        if total > 0:
            return [n / total for n in norms]
        samples = sum(u.num_samples for u in senders)
        return [u.num_samples / samples for u in senders]

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        result = super().aggregate_train(server_round, global_tensors, [head_only(u) for u in updates])
        for module in self.context.modules:
            senders = [u for u in updates if lora_pair(u, module) is not None]
            if not senders:
                continue
            weights = self.sparsity_weights(module, senders)
            for part in (LORA_A, LORA_B):
                key = tensor_key(module, part)
                shape = global_tensors[key].shape
                result[key] = weighted_mean([zero_pad(key, u.tensors[key], shape) for u in senders], weights, key)
        for update in updates:
            self.self_prune(update)
        return result

    def tail_share(self, update: ClientUpdate, keep: int) -> float | None:
        """share_k: the Frobenius share of the rank components from ``keep`` on (None: all products are zero)."""
        tail = full = 0.0
        for module in self.context.modules:
            pair = lora_pair(update, module)
            if pair is None:
                continue
            b, a = pair
            full += squared_norm(product(b, a))
            tail += squared_norm(product(b[:, keep:], a[keep:]))
        return math.sqrt(tail / full) if full > 0 else None

    def self_prune(self, update: ClientUpdate) -> None:
        """Lower the client's cap to r' when its tail components carry less than the threshold share."""
        pairs = [p for p in (lora_pair(update, m) for m in self.context.modules) if p is not None]
        if not pairs:
            return
        rank = pairs[0][1].shape[0]
        keep = max(self.options.min_rank, math.floor(self.options.decay * rank + 1e-9))
        if keep >= rank:
            return
        share = self.tail_share(update, keep)
        if share is not None and share < self.options.prune_threshold:
            self.caps[update.cid] = min(keep, self.caps.get(update.cid, self.context.rank))

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"ranks": {str(cid): rank for cid, rank in sorted(self.caps.items())}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        caps = {int(cid): int(rank) for cid, rank in state["ranks"].items()}
        bad = {cid: r for cid, r in caps.items() if not 1 <= r <= self.context.rank}
        if bad:
            raise ValueError(f"hetlora: client ranks must lie in 1..{self.context.rank}, got {bad}")
        self.caps = caps
