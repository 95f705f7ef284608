"""Whole-layer allocation shared by the layer baselines (FedRA, Fed-HeLLo's layer patterns and its
Fisher-guided FIM-HLA): each client trains whole layers, offered in the strategy's order for it this
round, while they fit its usable budget."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedpilot.planning.costmodel import CostModel, nothing_fits
from fedpilot.planning.layers import plan_whole_layers
from fedpilot.strategies.base import ClientInfo, FederationContext, derived_seed


class LayerOrdering(Protocol):
    """A strategy that offers layers to each client in an order of its own."""

    context: FederationContext

    def layer_order(self, server_round: int, client: ClientInfo) -> list[int]: ...

    def cost_model_for(self, client: ClientInfo) -> CostModel: ...


def client_rng(context: FederationContext, server_round: int, client: ClientInfo) -> np.random.Generator:
    """``client``'s random generator for ``server_round``, seeded by ``derived_seed(run seed, round, client)``
    so runs replay exactly and rounds differ."""
    return np.random.default_rng(derived_seed(context.seed, server_round, client.cid))


def allocate_whole_layers(strategy: LayerOrdering, server_round: int, client: ClientInfo, stop_at_miss: bool = False) -> tuple[str, ...]:
    """The modules ``client`` trains this round (all of them for a budget of None): the whole layers of
    ``strategy.layer_order`` that fit its usable budget (:func:`~fedpilot.planning.layers.plan_whole_layers`;
    ``stop_at_miss``: stop at the first layer that does not fit), else the largest partial set."""
    context = strategy.context
    if client.budget_bytes is None:
        return tuple(context.modules)
    room = context.usable(client.budget_bytes)
    order = strategy.layer_order(server_round, client)
    modules = plan_whole_layers(order, context.modules, strategy.cost_model_for(client), room, stop_at_miss=stop_at_miss)
    if modules is None:  # check_budgets (Strategy's default) refuses such a client before the first round
        raise nothing_fits(strategy.cost_model_for(client), client.cid, client.budget_bytes, context.memory_margin)
    return tuple(modules)
