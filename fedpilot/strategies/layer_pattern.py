"""Fed-HeLLo's geometric layer allocations (Zhang, Liu, Xu, Hu, "Fed-HeLLo: Efficient Federated
Foundation Model Fine-Tuning with Heterogeneous LoRA Allocation", IEEE TNNLS 2025, arXiv 2506.12213):
GD-HLA and its randomized form RGD-HLA.

Defining rule: the layers clients train follow a geometric pattern, a probability per layer
(:func:`fedpilot.planning.layers.pattern_probabilities`):

- ``bottleneck`` (the default, Fed-HeLLo's prior): [1/9,1/9,1/9,2/27,2/27,1/27,1/27,1/27,2/27,1/9,1/9,1/9]
  for 12 layers, linearly interpolated over relative depth and renormalised for other depths;
- ``triangle``: linear in depth, more weight on later layers; ``inverted-triangle``: its mirror
  (both inferred: the vectors are not released); ``uniform``: equal;
- ``top``: no probabilities, the last layers that fit, as one contiguous block (deterministic).

Each client gets whole layers (every LoRA target of a layer) fitted to its usable budget under the
position-aware cost model (:meth:`CostModel.cost`):

- fixed (GD-HLA, ``randomized: false``): the layers of highest probability that fit, taken in
  descending probability, a layer that does not fit skipped; ties go to the higher layer, which
  stores less activation memory (:func:`~fedpilot.planning.layers.priority_order`). The same set
  every round for a given budget.
- randomized (RGD-HLA, ``randomized: true``): every round, layers drawn without replacement with
  probabilities proportional to the pattern (:func:`~fedpilot.planning.layers.weighted_order`),
  seeded by ``derived_seed(run seed, round, client)``, each kept while it fits.

Where the literature is silent: Fed-HeLLo sizes budgets in layer counts; here a drawn layer that
does not fit is skipped and drawing goes on, so a budget is filled rather than cut at a count. A
client that affords no whole layer trains the largest partial set (the exact allocator with uniform
values), non-empty exactly when its cheapest module fits, so the start-up check is the default one;
a client of budget None trains every module. Aggregation: each tensor averaged over the clients
that trained it (FedAvg's per-tensor sample-weighted mean); frozen layers are not sent back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from pydantic import Field, model_validator

from fedpilot.core.settings import StrictModel
from fedpilot.core.tensors import TensorDict
from fedpilot.planning.layers import PATTERNS, pattern_probabilities, priority_order, top_order, weighted_order
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, FederationContext
from fedpilot.strategies.fedavg import FedAvg
from fedpilot.strategies.layer_utils import allocate_whole_layers, client_rng

Pattern = Literal["top", "uniform", "triangle", "inverted-triangle", "bottleneck"]
assert set(get_args(Pattern)) == set(PATTERNS)  # one list of patterns


class LayerPatternOptions(StrictModel):
    pattern: Pattern = Field("bottleneck", description="the per-layer probability pattern (top: the last layers that fit)")
    randomized: bool = Field(False, description="RGD-HLA: sample layers by the pattern each round (false: GD-HLA, fixed)")

    @model_validator(mode="after")
    def _top_has_nothing_to_sample(self) -> LayerPatternOptions:
        if self.randomized and self.pattern == "top":
            raise ValueError("randomized: pattern 'top' is deterministic (the last layers that fit) and has no probabilities "
                             "to sample; choose uniform, triangle, inverted-triangle or bottleneck, or set randomized: false")
        return self


@STRATEGIES.register("layer-pattern")
class LayerPattern(FedAvg):
    Options = LayerPatternOptions
    capabilities = Capabilities(memory_aware=True, per_client_assignment=True, rank_heterogeneous=False)

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        super().__init__(context, options)
        pattern = self.options.pattern
        self.probabilities = None if pattern == "top" else pattern_probabilities(pattern, context.num_layers)
        self.fixed_order = top_order(context.num_layers) if self.probabilities is None else priority_order(self.probabilities)

    def layer_order(self, server_round: int, client: ClientInfo) -> list[int]:
        """The order in which layers are offered to ``client`` this round."""
        if not self.options.randomized:
            return list(self.fixed_order)
        return weighted_order(self.probabilities, client_rng(self.context, server_round, client))

    def allocate(self, server_round: int, client: ClientInfo) -> tuple[str, ...]:
        """The modules ``client`` trains this round (all of them for a budget of None)."""
        return allocate_whole_layers(self, server_round, client, stop_at_miss=self.options.pattern == "top")

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        return {client.cid: Assignment(self.allocate(server_round, client)) for client in clients}
