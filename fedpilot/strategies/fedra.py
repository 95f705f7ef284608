"""FedRA (Su, Li, Xue, "FedRA: A Random Allocation Strategy for Federated Tuning to Unleash the
Power of Heterogeneous Clients", ECCV 2024, arXiv 2311.11227).

Defining rule: every round the server draws a NEW random allocation matrix: each sampled client
trains a random subset of whole layers (every LoRA target of each chosen layer) within its
capacity, and each layer's adapter is averaged over the clients that trained it (FedAvg's per-tensor
sample-weighted mean over the senders, :func:`~fedpilot.strategies.aggregation_utils.sample_weighted_average`).

Where the literature is silent (FedRA counts capacity in layers of equal cost; here memory is
position-aware: a set whose lowest layer is l pays the activation memory stored from the loss down
to l), the sampling rule is:

- draw a uniformly random order of the layers (numpy ``permutation``), seeded by
  ``derived_seed(run seed, round, client)`` so runs replay exactly and rounds differ;
- take the layers in that order while they fit the client's usable budget under
  :meth:`CostModel.cost`; a layer that does not fit is skipped and the next one tried
  (:func:`~fedpilot.planning.layers.fit_layers`).

Every set drawn fits, and it fills the budget: since activation memory never grows with depth,
cost only grows as modules are added, so no skipped layer could join the final set. Drawing a layer
COUNT first and then a random subset of that size (FedRA's literal matrix) would either exceed
budgets or, sized for the worst case (the lowest layers), waste them. The price of filling: a low
layer joins only when drawn early enough that its activation still fits, so lower layers are
trained less often than higher ones; this bias is what memory allows, not a prior.

A client that affords no whole layer trains the largest partial set instead (the exact allocator
with uniform values, :func:`~fedpilot.planning.layers.most_modules`; deterministic), which is
non-empty exactly when its cheapest module fits: so the start-up check is the default one, and a
client of budget None trains every module.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.core.tensors import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo
from fedpilot.strategies.fedavg import FedAvg
from fedpilot.strategies.layer_utils import allocate_whole_layers, client_rng


@STRATEGIES.register("fedra")
class FedRA(FedAvg):
    capabilities = Capabilities(memory_aware=True, per_client_assignment=True, rank_heterogeneous=False)
    # check_budgets: Strategy's default (every usable budget fits the cheapest module), inherited
    # through FedAvg: exactly the clients for which plan_whole_layers returns None are refused.

    def layer_order(self, server_round: int, client: ClientInfo) -> list[int]:
        """This round's random layer order for ``client``."""
        rng = client_rng(self.context, server_round, client)
        return [int(l) for l in rng.permutation(self.context.num_layers)]

    def allocate(self, server_round: int, client: ClientInfo) -> tuple[str, ...]:
        """The modules ``client`` trains this round (all of them for a budget of None)."""
        return allocate_whole_layers(self, server_round, client)

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        return {client.cid: Assignment(self.allocate(server_round, client)) for client in clients}
