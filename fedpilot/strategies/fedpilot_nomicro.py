"""Fed-pilot without planned micro-batches: every client's set is solved at one batch size, the whole batch (or
``train.micro_batch`` where the run sets one, as every baseline runs), never a smaller micro-batch per client.
Isolates what choosing each client's micro-batch adds (``micro_batching: planned``, Fed-pilot's default)."""

from __future__ import annotations

from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Capabilities
from fedpilot.strategies.fedpilot import FedPilot


@STRATEGIES.register("fedpilot-nomicro")
class FedPilotNoMicro(FedPilot):
    # every option of fedpilot but micro_batching, which it never reads
    capabilities = Capabilities(
        memory_aware=True, per_client_assignment=True, rank_heterogeneous=False,
        options=frozenset({"ig_weight", "refresh_rounds", "score_batches", "global_decay", "local_term", "global_term", "compensation",
                           "history_decay", "staleness_horizon", "stagg", "spatial", "memory_horizon", "dwa_temperature", "local_scope", "score_loss",
                           "keep_margin", "nesting", "checkpointing"}),
    )

    @property
    def plans_micro_batches(self) -> bool:
        return False
