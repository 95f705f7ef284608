"""Fed-pilot without the information-gain score: every module is worth the same, so the allocator
trains as many modules as fit. Isolates what the IG-score adds."""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Capabilities, ClientInfo
from fedpilot.strategies.fedpilot import FedPilot


@STRATEGIES.register("fedpilot-noig")
class FedPilotNoIG(FedPilot):
    # uniform values: the IG-score's options decide nothing (the global term is still kept, unread, for checkpoints);
    # it reads stagg's options, the stability rule's margin, nesting and checkpointing only
    capabilities = Capabilities(
        memory_aware=True, per_client_assignment=True, rank_heterogeneous=False,
        options=frozenset({"compensation", "history_decay", "staleness_horizon", "stagg", "spatial", "memory_horizon", "dwa_temperature", "keep_margin",
                           "nesting", "checkpointing", "micro_batching"}),
    )

    def module_values(self, cid: int) -> dict[str, float]:
        return {m: 1.0 for m in self.context.modules}

    def configure_score(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, list[str]]:
        return {}  # uniform values need no local information
