"""FFA-LoRA: federated LoRA with the A matrices frozen (Sun, Li, Li, Ding, "Improving LoRA in
Privacy-preserving Federated Learning", ICLR 2024, arXiv 2403.12313)."""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.core.keys import LORA_A, LORA_B, tensor_key
from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, ClientUpdate
from fedpilot.strategies.fedavg import FedAvg


@STRATEGIES.register("ffa-lora")
class FFALoRA(FedAvg):
    """FFA-LoRA (Sun et al., ICLR 2024, arXiv 2403.12313): freeze every ``lora_A`` at its random
    initialisation and train and average only the zero-initialised ``lora_B``.

    Defining rule. Every round every sampled client trains every module's ``B`` (and the head) from
    the global adapter; the server keeps each A as it was initialised and averages the rest:

        A_m(t+1) = A_m(0)                                   (never sent, never changed)
        B_m(t+1) = sum_k n_k B_{k,m} / sum_k n_k            (FedAvg of B)
        head(t+1) = sum_k n_k head_k / sum_k n_k

    Because all clients share one A, the average of their updates is exact:
    ``mean_k(B_k) A = mean_k(B_k A)``, which plain FedAvg of A and B is not. Uploads halve (only B
    and the head travel back; A has as many entries as B for square targets).

    Memory-unaware, like FedAvg (``Capabilities(memory_aware=False)``): every client trains every module, so
    a client whose budget cannot hold full-depth backpropagation overruns it and the run records
    the violation. Freezing A saves A's gradient and optimiser state, but the activations stored
    from the lowest layer up, which dominate, are the same as full LoRA's.

    Left out (not part of the defining rule): the paper's larger LoRA scaling and its
    differential-privacy noise; the scaling stays the model's alpha / rank.
    """

    capabilities = Capabilities(memory_aware=False, per_client_assignment=False, rank_heterogeneous=False, payload="lora_b")
    parts = (LORA_B,)

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        """Every client trains every module's B at the global rank, from the global adapter."""
        plan = super().configure_train(server_round, clients, global_tensors)
        return {cid: Assignment(a.modules, a.ranks, self.parts, a.tensors) for cid, a in plan.items()}

    def frozen_keys(self) -> set[str]:
        """The tensors that never train: every module's ``lora_A``."""
        return {tensor_key(m, LORA_A) for m in self.context.modules}

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        """FedAvg of what was sent (B and the head); A is carried over bit for bit."""
        frozen = self.frozen_keys()
        for update in updates:
            sent = frozen & set(update.tensors)
            if sent:  # validation rules this out; never average a frozen matrix
                raise ValueError(f"ffa-lora: client {update.cid} sent frozen lora_A tensors, e.g. {sorted(sent)[0]!r}")
        result = super().aggregate_train(server_round, global_tensors, updates)
        for key in frozen & set(global_tensors):
            result[key] = global_tensors[key].copy()
        return result
