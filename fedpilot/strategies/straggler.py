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

Clients planned with their own cost models (Flower nodes, :meth:`cost_model_for`): each limited
client's own largest set is computed under its own model; the smallest of these (fewest modules, then
smallest usable budget, then lowest id) is the candidate, and while some client cannot afford it under
its own model, its lowest-layer module (ties: by name) is dropped. With one shared cost model this is
exactly the rule above (the weakest client's set fits everyone).
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
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, FederationContext
from fedpilot.strategies.fedavg import FedAvg


@STRATEGIES.register("straggler")
class Straggler(FedAvg):
    capabilities = Capabilities(memory_aware=True, per_client_assignment=False, rank_heterogeneous=False)

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
        own: dict[int, list[str]] = {}
        solved: dict[tuple[int, int], list[str] | None] = {}  # (cost model, room) -> its largest set, solved once
        for client in sorted(limited, key=lambda c: (self.context.usable(c.budget_bytes), c.cid)):
            key = (id(self.cost_model_for(client)), self.context.usable(client.budget_bytes))
            if key not in solved:
                solved[key] = most_modules(self.cost_model_for(client), self.context.modules, key[1])
            chosen = solved[key]
            if chosen is None:
                error = nothing_fits(self.cost_model_for(client), client.cid, client.budget_bytes, self.context.memory_margin)
                self.refusal = str(error)
                raise error
            own[client.cid] = chosen
        weakest = min(limited, key=lambda c: (len(own[c.cid]), self.context.usable(c.budget_bytes), c.cid))
        common = list(own[weakest.cid])
        while True:
            short = [c for c in limited if self.cost_model_for(c).cost(common) > self.context.usable(c.budget_bytes)]
            if not short:
                break
            if len(common) == 1:
                error = nothing_fits(self.cost_model_for(short[0]), short[0].cid, short[0].budget_bytes, self.context.memory_margin)
                self.refusal = str(error)
                raise error
            common.remove(min(common, key=lambda m: (self.context.cost_model.layer[m], m)))
        self.common = tuple(common)

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        if self.common is None:
            raise FedpilotError(self.refusal or "straggler: check_budgets must see every client before the first round")
        for client in clients:
            cost = self.cost_model_for(client).cost(self.common)
            if client.budget_bytes is not None and cost > self.context.usable(client.budget_bytes):
                raise FedpilotError(
                    f"federation.budgets: client {client.cid} has {mib(self.context.usable(client.budget_bytes)):.1f} MiB usable, "
                    f"below the {mib(cost):.1f} MiB of straggler's common set; check_budgets never saw this client"
                )
        return {client.cid: Assignment(self.common) for client in clients}
