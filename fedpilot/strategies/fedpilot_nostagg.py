"""Fed-pilot without spatial-temporal compensation: each module is the plain sample-weighted mean
over the clients that trained it, and untouched modules stay put. Isolates what stagg adds."""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.aggregation_utils import sample_weighted_average
from fedpilot.strategies.base import Capabilities, ClientUpdate
from fedpilot.strategies.fedpilot import FedPilot


@STRATEGIES.register("fedpilot-nostagg")
class FedPilotNoStagg(FedPilot):
    # the plain average: none of stagg's options is read, only the IG-score's, the stability rule's, nesting and checkpointing
    capabilities = Capabilities(
        memory_aware=True, per_client_assignment=True, rank_heterogeneous=False,
        options=frozenset({"ig_weight", "refresh_rounds", "score_batches", "global_decay", "local_term", "global_term", "local_scope",
                           "score_loss", "keep_margin", "nesting", "checkpointing", "micro_batching"}),
    )

    def aggregate_modules(self, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        return sample_weighted_average(global_tensors, updates)
