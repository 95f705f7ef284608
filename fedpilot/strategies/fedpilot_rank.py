"""Fed-pilot with joint (module, rank) allocation: each client trains the modules, and the LoRA rank of
each, worth most under its memory budget, in one exact solve (fedpilot.planning.joint).

Planning: module m at rank r is worth IG(m) * rank_share(r, R) (R: the global rank;
:func:`fedpilot.planning.scoring.rank_share`, a concave, saturating share that is 1 at R) and costs
:meth:`CostModel.module_cost` (m, r) (its saved inputs plus rank-proportional parameters, gradients
and optimiser state); the activation term is the lowest trained layer's, whatever the ranks. With
``rank_options`` {0, R} it plans exactly as ``fedpilot``.

Distribution: a client receives the global adapter with each of its modules of rank r < R cut to its
first r rank components (A's rows, B's columns); the modules it does not train run at the global rank.

Aggregation: stagg momentum, with every rank component of a module's A and B aggregated over the
clients that trained it (:func:`~fedpilot.strategies.aggregation_utils.component_mean_delta`): the
first r components of a rank-r client stand beside the same components of richer clients, and the
components it did not train are left to those that did, with stagg's coverage weight per component.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fedpilot.core.errors import ConfigError
from fedpilot.core.settings import StrictModel
from fedpilot.core.tensors import TensorDict
from fedpilot.planning.allocation import Allocation
from fedpilot.planning.costmodel import CostModel, nothing_fits
from fedpilot.planning.joint import rank_problem, solve_joint
from fedpilot.planning.scoring import rank_values
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, FederationContext
from fedpilot.strategies.fedpilot import FedPilot, FedPilotOptions
from fedpilot.strategies.rank_utils import truncate_adapter


class FedPilotRankOptions(FedPilotOptions):
    micro_batching: Literal["off", "planned"] = Field("off", description="off: the joint rank solver plans the whole batch only")
    rank_options: list[int] | None = Field(
        None, description="the LoRA ranks a module may train at (0: not trained; each <= model.lora.rank); None: 0, the global rank and its halvings down to 1"
    )

    @field_validator("rank_options")
    @classmethod
    def _ranks(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if any(r < 0 for r in value) or not any(r > 0 for r in value):
            raise ValueError(f"rank_options must be ranks >= 0 with at least one >= 1, got {value}")
        return sorted(set(value) | {0})

    @model_validator(mode="after")
    def _no_checkpointing(self) -> FedPilotRankOptions:
        """The joint (module, rank) solver prices no checkpointing: planning it here would be silently ignored."""
        if self.checkpointing != "off":
            raise ValueError("checkpointing: fedpilot-rank's joint rank solver does not plan activation checkpointing; leave it off")
        if self.micro_batching != "off":
            raise ValueError("micro_batching: fedpilot-rank's joint rank solver does not plan micro-batches; leave it off")
        return self

    @model_validator(mode="after")
    def _momentum_only(self) -> FedPilotRankOptions:
        if self.stagg != "momentum":
            raise ValueError("fedpilot-rank aggregates rank components with stagg: momentum; stagg: memory keeps whole tensors (set stagg: momentum)")
        return self

    @model_validator(mode="after")
    def _not_nested(self) -> FedPilotRankOptions:
        """fedpilot-rank plans its own way (configure_train): nesting would be silently ignored, an error instead."""
        if self.nesting != "off":
            raise ValueError("fedpilot-rank plans (module, rank) selections one client at a time; nesting: round nests fedpilot's module sets (leave it out)")
        return self


def default_rank_options(rank: int) -> list[int]:
    """0, ``rank`` and its halvings down to 1: for 8, [0, 1, 2, 4, 8]."""
    options = {0}
    while rank >= 1:
        options.add(rank)
        rank //= 2
    return sorted(options)


@STRATEGIES.register("fedpilot-rank")
class FedPilotRank(FedPilot):
    Options = FedPilotRankOptions
    capabilities = Capabilities(memory_aware=True, per_client_assignment=True, rank_heterogeneous=True)

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        super().__init__(context, options)
        given = self.options.rank_options
        self.rank_options = default_rank_options(context.rank) if given is None else list(given)
        too_high = [r for r in self.rank_options if r > context.rank]
        if too_high:
            raise ConfigError(f"strategy_options.rank_options: {too_high} exceed the global LoRA rank {context.rank} (model.lora.rank); drop them")
        self.ranks: dict[int, dict[str, int]] = {}  # every client's last assigned ranks (every trained module)

    def check_budgets(self, clients: Sequence[ClientInfo]) -> None:
        """Every client must fit its cheapest module at the lowest non-zero rank option (margin included)."""
        margin, lowest = self.context.memory_margin, min(r for r in self.rank_options if r > 0)
        lower = [r for r in self.rank_options if 0 < r < self.context.rank]
        for client in clients:
            cost_model = self.allocation_cost_model(client)
            if lower and (cost_model.rank is None or set(cost_model.module) - set(cost_model.rank_bytes)):
                raise ConfigError(
                    f"strategy_options.rank_options: client {client.cid}'s cost model ({cost_model.source}) has no per-rank term, so it "
                    f"cannot price ranks {lower}; recalibrate it, or set rank_options to [0, {self.context.rank}]"
                )
            if client.budget_bytes is None:
                continue
            cheapest = min(cost_model.cost([m], {m: lowest} if lowest < self.context.rank else None) for m in cost_model.module)
            if cheapest > self.context.usable(client.budget_bytes):
                raise nothing_fits(cost_model, client.cid, client.budget_bytes, margin)

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        plan = {}
        for client in clients:
            allocation, ranks = self.allocate_ranks(client)
            self.allocations[client.cid] = allocation
            self.trained[client.cid] = tuple(allocation.modules)
            self.ranks[client.cid] = dict(ranks)
            lower = {m: r for m, r in ranks.items() if r < self.context.rank}
            plan[client.cid] = Assignment(tuple(allocation.modules), lower, tensors=truncate_adapter(global_tensors, lower) if lower else None)
        return plan

    def module_rank_values(self, cid: int) -> dict[str, dict[int, float]]:
        """v(m, r) = IG(m) * rank_share(r, R) for every rank option r >= 1."""
        return rank_values(self.module_values(cid), self.rank_options, self.context.rank)

    def allocate_ranks(self, client: ClientInfo) -> tuple[Allocation, dict[str, int]]:
        """The most valuable (module, rank) selection that fits the client's usable budget, and its ranks."""
        cost_model, values = self.allocation_cost_model(client), self.module_rank_values(client.cid)
        if client.budget_bytes is None:
            top = max(self.rank_options)
            ranks = {m: top for m in self.context.modules}
            priced = cost_model.cost(ranks, ranks if top < self.context.rank else None)
            return Allocation(list(ranks), priced, sum(values[m][top] for m in ranks), 0.0), ranks
        usable = self.context.usable(client.budget_bytes)
        answer = solve_joint(rank_problem(usable, cost_model, values, self.context.rank))
        if answer is None:  # check_budgets rules this out before the first round
            raise nothing_fits(cost_model, client.cid, client.budget_bytes, self.context.memory_margin)
        new = Allocation(answer.modules, answer.predicted_bytes, answer.value, answer.solve_ms, answer.optimal)
        return self.keep_previous_ranks(client.cid, new, answer.ranks, cost_model, values, usable)

    def keep_previous_ranks(self, cid: int, new: Allocation, ranks: dict[str, int], cost_model: CostModel,
                            values: Mapping[str, Mapping[int, float]], usable: int) -> tuple[Allocation, dict[str, int]]:
        """The stability rule (``keep_margin`` mu) on (module, rank) selections: the previous one while it
        fits and the new optimum is not worth more than (1 + mu) times it, both under today's values."""
        margin, previous = self.options.keep_margin, self.ranks.get(cid)
        if margin is None or not previous:
            return new, ranks
        cost = cost_model.cost(previous, {m: r for m, r in previous.items() if r < self.context.rank})
        value = sum(values[m][r] for m, r in previous.items())
        if cost > usable or new.value > (1 + margin) * value:
            return new, ranks
        return Allocation(list(previous), cost, value, new.solve_ms), dict(previous)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranks": {str(cid): dict(r) for cid, r in self.ranks.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.ranks = {int(cid): {m: int(r) for m, r in ranks.items()} for cid, ranks in state.get("ranks", {}).items()}
