"""Exclusive: only the clients whose usable budget fits full LoRA take part, as without fedpilot;
the others sit out every round. FedAvg over the participants.

Sampling draws among the eligible clients only, so partial participation never picks a round with
nobody able to train; a federation with no eligible client at all is refused before the first round.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.core.errors import FedpilotError
from fedpilot.core.sizes import mib
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Capabilities, ClientInfo
from fedpilot.strategies.fedavg import FedAvg


@STRATEGIES.register("exclusive")
class Exclusive(FedAvg):
    capabilities = Capabilities(memory_aware=True, per_client_assignment=False, rank_heterogeneous=False)

    def eligible(self, clients: Sequence[ClientInfo]) -> list[ClientInfo]:
        """The clients whose usable budget fits full LoRA under their own cost model (:meth:`cost_model_for`)."""
        return [c for c in clients if c.budget_bytes is None or self.context.usable(c.budget_bytes) >= self.cost_model_for(c).full()]

    def check_budgets(self, clients: Sequence[ClientInfo]) -> None:
        if not self.eligible(clients):
            full = min((self.cost_model_for(c).full() for c in clients), default=self.context.cost_model.full())
            raise FedpilotError(
                f"federation.budgets: exclusive trains only clients that fit full LoRA ({mib(full):.1f} MiB "
                f"plus the {self.context.memory_margin:.0%} margin), and no client does; raise a budget or choose another strategy"
            )

    def sample(self, server_round: int, clients: Sequence[ClientInfo]) -> list[ClientInfo]:
        return super().sample(server_round, self.eligible(clients))
