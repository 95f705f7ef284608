"""Exclusive: only the clients whose budget fits full LoRA take part, as without fedpilot; the
others sit out every round. FedAvg over the participants."""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.errors import FedpilotError
from fedpilot.memsize import mib
from fedpilot.models import TensorDict
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import ClientInfo
from fedpilot.strategies.fedavg import FedAvg


@STRATEGIES.register("exclusive")
class Exclusive(FedAvg):
    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, list[str]]:
        full = self.context.cost_model.full()
        fits = {c.cid for c in clients if c.budget_bytes is None or c.budget_bytes >= full}
        if not fits:
            raise FedpilotError(
                f"exclusive: no selected client's budget fits full LoRA ({mib(full):.1f} MiB) in round {server_round}"
            )
        return {cid: modules for cid, modules in super().configure_train(server_round, clients, global_tensors).items() if cid in fits}
