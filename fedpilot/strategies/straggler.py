"""Straggler: the federation trains at the pace of its weakest client.

The memory-homogeneous baseline of heterogeneous federated LoRA (the "straggler" setting of
Fed-HeLLo, Zhang et al., IEEE TNNLS 2025, arXiv 2506.12213, where every client trains the 6 of 12
layers the smallest client affords): every client, whatever its own budget, trains ONE common module
set, and the server averages it as FedAvg does.

Defining rule, as implemented: the common set is the largest module set (most modules; ties: the
exact allocator with uniform values decides, :func:`fedpilot.planning.layers.most_modules`) whose
:meth:`CostModel.cost` fits the smallest usable budget among ALL the federation's clients (budget None
counts as unlimited; all None: every module). It is computed once, in :meth:`check_budgets`, from
every client's budget, so it never depends on which clients a round samples.

Where the literature is silent: the common set is priced module by module with the position-aware
cost model rather than counted in whole layers, so a weak client's budget is used to its last module;
a client whose budget is None trains the common set too (the rule is one set for everybody).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedpilot.core.errors import FedpilotError
from fedpilot.core.settings import StrictModel
from fedpilot.core.sizes import mib
from fedpilot.core.tensors import TensorDict
from fedpilot.planning.costmodel import nothing_fits
from fedpilot.planning.layers import most_modules
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Assignment, ClientInfo, FederationContext
from fedpilot.strategies.fedavg import FedAvg


@STRATEGIES.register("straggler")
class Straggler(FedAvg):
    memory_aware = True

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        super().__init__(context, options)
        self.common: tuple[str, ...] | None = None  # set by check_budgets
        self.refusal: str | None = None  # check_budgets' error, repeated if a round is asked for anyway

    def check_budgets(self, clients: Sequence[ClientInfo]) -> None:
        """Fix the common set from every client's budget; fail when the smallest fits no module."""
        self.common, self.refusal = None, None
        limited = [c for c in clients if c.budget_bytes is not None]
        if not limited:
            self.common = tuple(self.context.modules)
            return
        weakest = min(limited, key=lambda c: (self.context.usable(c.budget_bytes), c.cid))
        chosen = most_modules(self.context.cost_model, self.context.modules, self.context.usable(weakest.budget_bytes))
        if chosen is None:
            error = nothing_fits(self.context.cost_model, weakest.cid, weakest.budget_bytes, self.context.memory_margin)
            self.refusal = str(error)
            raise error
        self.common = tuple(chosen)

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        if self.common is None:
            raise FedpilotError(self.refusal or "straggler: check_budgets must see every client before the first round")
        cost = self.context.cost_model.cost(self.common)
        for client in clients:
            if client.budget_bytes is not None and cost > self.context.usable(client.budget_bytes):
                raise FedpilotError(
                    f"federation.budgets: client {client.cid} has {mib(self.context.usable(client.budget_bytes)):.1f} MiB usable, "
                    f"below the {mib(cost):.1f} MiB of straggler's common set; check_budgets never saw this client"
                )
        return {client.cid: Assignment(self.common) for client in clients}
