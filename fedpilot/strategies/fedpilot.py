"""Fed-pilot (Zhang et al., "Fed-pilot: Optimizing LoRA Allocation for Efficient Federated
Fine-Tuning with Heterogeneous Clients"): each client trains the LoRA modules worth most under
its memory budget, and the server compensates the modules few clients trained.

- allocation: the exact position-aware knapsack (fedpilot.planning.allocation) over the calibrated cost model;
- value: the information-gain score (fedpilot.planning.scoring), local Fisher terms refreshed every
  ``refresh_rounds`` rounds, global terms every round; by default (``local_scope: federation``) every
  client is planned with the mean of all scored clients' local terms (one value per module for the
  whole federation: clients of one budget train the same set in a round); ``local_scope: client``
  plans each client with its own (higher-variance under label skew: docs/protocol.md);
- activation checkpointing (``checkpointing: planned``, off by default): each client's set is solved
  with and without it (fedpilot.planning.checkpointing) and runs checkpointed when that is worth more;
- micro-batches (``micro_batching: planned``, the default, chosen on validation: docs/protocol.md): each client's set is solved at its batch and
  at halvings of it down to one row, or to train.micro_batch where the run sets one (the calibrated cost model
  scaled, CostModel.at_batch), and the client accumulates the micro-batches' gradients into the same optimiser
  step where a smaller one is worth more;
- stability (``keep_margin`` = mu, off by default): a client keeps its previous module set A' while
  A' still fits and the new optimum A* is not worth more than (1 + mu) * IG(A'), both valued with
  today's scores, so that small moves of the scores do not reshuffle what a client trains;
- nesting (``nesting: round``, off by default): the round's clients are planned together so that a
  poorer client's set is a subset of a richer one's (fedpilot.planning.nesting: richest first, each
  next client's exact optimum restricted to the next richer client's set); the stability rule then
  keeps a previous set only when it lies within the set the client is restricted to;
- aggregation: spatial-temporal compensation (``stagg``: compensation.TemporalCompensation, the
  coverage-weighted update history, with dynamic weight adjustment of each module's step when
  ``dwa_temperature`` is set, or compensation.UpdateMemory, every client's latest update); by default
  (``spatial: coverage``, chosen on validation: docs/protocol.md, "rt-few-rich: why fedpilot collapsed")
  a module's step is its trainers' mean update times their share of the round's rows, so a module that
  one rich client trained alone moves by that client's share, not by its whole update.

The ablations subclass this and override one hook each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from fedpilot.core.errors import ConfigError
from fedpilot.core.keys import module_layer
from fedpilot.core.settings import StrictModel
from fedpilot.core.tensors import TensorDict
from fedpilot.planning.allocation import Allocation, Problem, solve
from fedpilot.planning.checkpointing import solve_micro_batched, solve_planned
from fedpilot.planning.costmodel import CostModel, fits_something, nothing_fits
from fedpilot.planning.nesting import Nested, nested_allocations
from fedpilot.planning.scoring import GlobalChange, GlobalCoverage, federation_local, ig_scores
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.aggregation_utils import coverage
from fedpilot.strategies.base import Assignment, Capabilities, ClientInfo, ClientScores, ClientUpdate, FederationContext
from fedpilot.strategies.compensation import TemporalCompensation, UpdateMemory
from fedpilot.strategies.fedavg import FedAvg


class FedPilotOptions(StrictModel):
    # what a run recorded before an option existed ran with, where that is not the option's default (fedpilot.comparison.plan)
    before_recorded: ClassVar[dict[str, Any]] = {"spatial": "trainers"}

    ig_weight: float = Field(0.5, ge=0, le=1, description="lambda: weight of the local (Fisher) term")
    refresh_rounds: int = Field(2, ge=1, description="R: clients rescore every R rounds")
    score_batches: int = Field(2, ge=1, description="batches of squared gradients per local score")
    global_decay: float = Field(0.5, ge=0, lt=1, description="EMA decay of the global term")
    local_term: Literal["per-parameter", "per-module"] = Field(
        "per-parameter", description="the local Fisher term per parameter, or times the module's parameter count"
    )
    global_term: Literal["change", "coverage"] = Field(
        "change", description="change: relative aggregated update (GlobalChange); coverage: share of training that left the module out"
    )
    compensation: float = Field(0.5, ge=0, le=1, description="eta: the largest weight of the update history")
    history_decay: float = Field(0.9, ge=0, lt=1, description="beta: momentum of the update history")
    staleness_horizon: int = Field(3, ge=1, description="tau: rounds of staleness until full compensation")
    stagg: Literal["momentum", "memory"] = Field(
        "momentum", description="momentum: coverage-weighted update history (TemporalCompensation); memory: every client's latest update (UpdateMemory)"
    )
    spatial: Literal["trainers", "coverage"] = Field(
        "coverage", description="stagg momentum's step of a module (stagg memory has its own): trainers, the mean update of the clients that trained it; coverage, "
        "that mean times the share of the round's rows that trained it (a client that left the module out counts as a zero update)"
    )
    memory_horizon: int | None = Field(None, ge=1, description="stagg memory: forget an update this many rounds after it was made (None: never)")
    dwa_temperature: float | None = Field(
        None, gt=0, description="T: stagg momentum with dynamic weight adjustment of each module's step (Liu et al. 2019; None: off)"
    )
    local_scope: Literal["client", "federation"] = Field(
        "federation", description="federation: the mean of every scored client's Fisher terms, the same values for all; client: each client's own"
    )
    score_loss: Literal["plain", "trained"] = Field(
        "plain", description="the loss the local Fisher term differentiates: plain cross-entropy, or the one clients train on (train.logit_adjustment)"
    )
    keep_margin: float | None = Field(
        None, ge=0, description="mu: keep a client's previous set unless the new one is worth more than (1 + mu) times it (None: always re-solve)"
    )
    nesting: Literal["off", "round"] = Field(
        "off", description="round: nest the round's sets, each client's optimum restricted to the next richer client's set (fedpilot.planning.nesting); off: each its own optimum"
    )
    checkpointing: Literal["off", "planned"] = Field(
        "off", description="planned: a client recomputes its frozen blocks' activations (slower, less memory) when that buys more value; off: never"
    )
    micro_batching: Literal["off", "planned"] = Field(
        "planned", description="planned: a client runs its batch as micro-batches (halvings of train.batch_size down to one row, "
        "or to train.micro_batch) and accumulates their gradients, the same step with less memory and more time, when that "
        "buys more value; off: never (the default when checkpointing, nesting or keep_margin is set, which plan without it)"
    )

    @model_validator(mode="before")
    @classmethod
    def _whole_batch_planners(cls, data: Any) -> Any:
        """Checkpointing, nesting and the stability rule plan at the whole batch: set, they turn the default
        micro_batching off (set explicitly, micro_batching: planned with them is an error)."""
        if not isinstance(data, dict) or "micro_batching" in data:
            return data
        if data.get("checkpointing", "off") != "off" or data.get("nesting", "off") not in ("off", False) or data.get("keep_margin") is not None:
            return {**data, "micro_batching": "off"}
        return data

    @field_validator("nesting", mode="before")
    @classmethod
    def _bare_off(cls, value: object) -> object:
        """YAML reads a bare ``off`` as false: that is ``off`` too."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _one_stagg(self) -> FedPilotOptions:
        """An option of the other stagg would be silently ignored: an error instead."""
        if self.stagg == "memory" and self.dwa_temperature is not None:
            raise ValueError("dwa_temperature weights stagg momentum's steps; with stagg: memory leave it out (or set stagg: momentum)")
        if self.stagg == "memory" and "spatial" in self.model_fields_set:
            raise ValueError("spatial sets stagg momentum's steps; with stagg: memory leave it out (or set stagg: momentum)")
        if self.stagg == "momentum" and self.memory_horizon is not None:
            raise ValueError("memory_horizon belongs to stagg: memory; with stagg: momentum leave it out (or set stagg: memory)")
        if self.nesting != "off" and self.checkpointing != "off":
            raise ValueError("nesting: round plans without activation checkpointing; use one of nesting: round and checkpointing: planned")
        if self.micro_batching != "off" and (self.checkpointing != "off" or self.nesting != "off" or self.keep_margin is not None):
            raise ValueError("micro_batching: planned plans alone; leave checkpointing and nesting off and keep_margin unset with it "
                             "(or set micro_batching: off)")
        return self


@STRATEGIES.register("fedpilot")
class FedPilot(FedAvg):
    Options = FedPilotOptions
    capabilities = Capabilities(memory_aware=True, per_client_assignment=True, rank_heterogeneous=False)

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        super().__init__(context, options)
        opts = self.options
        self.local_scores: dict[int, dict[str, float]] = {}
        self.global_change: GlobalChange | GlobalCoverage = (
            GlobalCoverage(context.modules, opts.global_decay)
            if opts.global_term == "coverage"
            else GlobalChange(context.module_keys, context.modules, opts.global_decay)
        )
        self.sizes = (
            {m: sum(int(np.prod(context.shapes[k])) for k in context.module_keys[m]) for m in context.modules}
            if opts.local_term == "per-module"
            else None
        )
        self.compensation: TemporalCompensation | UpdateMemory = (
            UpdateMemory(opts.memory_horizon)
            if opts.stagg == "memory"
            else TemporalCompensation(context.module_keys, context.modules, opts.compensation, opts.history_decay, opts.staleness_horizon,
                                      opts.dwa_temperature, opts.spatial)
        )
        self.allocations: dict[int, Allocation] = {}
        self.trained: dict[int, tuple[str, ...]] = {}  # every client's last assigned set (keep_margin compares with it)
        self.nesting: dict[int, Nested] = {}  # nesting: round: the last round's place of each planned client
        self.score_batches = opts.score_batches
        self.score_trained_loss = opts.score_loss == "trained"

    # -- what allocation plans with (the ablations override these) --------------------------------
    def allocation_cost_model(self, client: ClientInfo) -> CostModel:
        """The cost model that plans ``client``: its own, else the federation's (:meth:`cost_model_for`); at the whole
        batch when this strategy plans micro-batches itself (it scales the model to each size it tries)."""
        if self.micro_batched(client):
            return self.context.whole_batch_cost_model(client)
        return self.cost_model_for(client)

    def micro_batched(self, client: ClientInfo) -> bool:
        """Whether ``client`` is planned over micro-batches: micro_batching planned and its cost model prices them. A
        model that cannot (calibrated before the one-row probe, or built by hand) plans the whole batch under the
        default, and is an error (check_budgets) where the config asked for micro_batching: planned explicitly."""
        if not self.plans_micro_batches:
            return False
        return self.context.whole_batch_cost_model(client).prices_micro_batches or "micro_batching" in self.options.model_fields_set

    @property
    def smallest_micro_batch(self) -> int:
        """The smallest micro-batch the planner may choose: train.micro_batch where set (the run's floor on step
        time), else one row."""
        return self.context.micro_batch or 1

    def module_values(self, cid: int) -> dict[str, float]:
        modules, opts = self.context.modules, self.options
        if opts.local_scope == "federation":
            local = federation_local(self.local_scores.values(), modules, self.sizes)
            return ig_scores(local, self.global_change.change, modules, opts.ig_weight)
        return ig_scores(self.local_scores.get(cid, {}), self.global_change.change, modules, opts.ig_weight, self.sizes)

    def aggregate_modules(self, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        return self.compensation.aggregate(global_tensors, updates)

    # -- scoring phase -----------------------------------------------------------------------------
    def configure_score(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, list[str]]:
        if (server_round - 1) % self.options.refresh_rounds:
            return {}
        return {c.cid: self.affordable_modules(c) for c in clients}

    def aggregate_score(self, server_round: int, scores: Sequence[ClientScores]) -> None:
        for result in scores:
            self.local_scores[result.cid] = dict(result.scores)

    def score_micro_batch(self, client: ClientInfo) -> int:
        """A client planned over micro-batches scores at the smallest it may train at (so the poorest clients, which
        train one row at a time, score too); otherwise as it trains (train.micro_batch, or the whole batch)."""
        return self.smallest_micro_batch if self.micro_batched(client) else self.context.micro_batch

    def affordable_modules(self, client: ClientInfo) -> list[str]:
        """The modules a client can backpropagate into at once: from the top layer down while they fit
        (priced with the client's cost model at its scoring micro-batch, :meth:`score_micro_batch`)."""
        budget = client.budget_bytes
        if budget is None:
            return list(self.context.modules)
        micro = self.score_micro_batch(client)
        whole = self.context.whole_batch_cost_model(client)
        cost_model = whole.at_batch(micro) if micro else whole
        chosen: list[str] = []
        for module in sorted(self.context.modules, key=module_layer, reverse=True):
            if cost_model.cost([*chosen, module]) > self.context.usable(budget):
                break
            chosen.append(module)
        return [m for m in self.context.modules if m in chosen]

    # -- training phase ----------------------------------------------------------------------------
    def check_budgets(self, clients: Sequence[ClientInfo]) -> None:
        """Every client must fit its cheapest module under the model it is planned with (margin included),
        checkpointed or not when checkpointing is planned (its cost model must then price it)."""
        margin = self.context.memory_margin
        for client in clients:
            cost_model = self.allocation_cost_model(client)
            if self.micro_batched(client):
                if not cost_model.prices_micro_batches:
                    raise ConfigError(
                        f"strategy_options.micro_batching: client {client.cid}'s cost model ({cost_model.source}) cannot price "
                        "micro-batches (no one-row probe); recalibrate it, or set micro_batching: off"
                    )
                smallest = cost_model.at_batch(self.smallest_micro_batch)
                if fits_something(smallest, client.budget_bytes, margin):
                    continue
                raise nothing_fits(smallest, client.cid, client.budget_bytes, margin)
            if self.plans_checkpointing and not cost_model.prices_checkpointing:
                raise ConfigError(
                    f"strategy_options.checkpointing: client {client.cid}'s cost model ({cost_model.source}) cannot price activation "
                    "checkpointing (no checkpointed terms); recalibrate it, or set checkpointing: off"
                )
            if fits_something(cost_model, client.budget_bytes, margin):
                continue
            if not (self.plans_checkpointing and fits_something(cost_model.checkpointed(), client.budget_bytes, margin)):
                raise nothing_fits(cost_model, client.cid, client.budget_bytes, margin)

    @property
    def plans_checkpointing(self) -> bool:
        return self.options.checkpointing == "planned"

    @property
    def plans_micro_batches(self) -> bool:
        return getattr(self.options, "micro_batching", "off") == "planned"

    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        nested = self.allocate_nested(clients) if self.options.nesting == "round" else None
        plan = {}
        for client in clients:
            allocation = self.allocate(client) if nested is None else nested[client.cid]
            self.allocations[client.cid] = allocation
            self.trained[client.cid] = tuple(allocation.modules)
            plan[client.cid] = Assignment(tuple(allocation.modules), checkpointing=allocation.checkpointing, micro_batch=self.micro_batch_of(client, allocation))
        return plan

    def micro_batch_of(self, client: ClientInfo, allocation: Allocation) -> int:
        """The assignment's micro-batch: the planned one; where the planner kept the whole batch under a run-wide
        train.micro_batch, the batch's rows, said explicitly (0 would be read as the run's micro-batch)."""
        if allocation.micro_batch or not (self.context.micro_batch and self.micro_batched(client)):
            return allocation.micro_batch
        return int(self.context.whole_batch_cost_model(client).batch_rows or 0)

    def allocate(self, client: ClientInfo) -> Allocation:
        """The most valuable module set that fits the client's usable budget under the planning cost model."""
        cost_model, values = self.allocation_cost_model(client), self.module_values(client.cid)
        if client.budget_bytes is None:
            modules = list(self.context.modules)
            return Allocation(modules, cost_model.cost(modules), sum(values.values()), 0.0)
        usable = self.context.usable(client.budget_bytes)
        problem = Problem(usable, cost_model, values)
        if self.micro_batched(client):
            allocation = solve_micro_batched(problem, smallest=self.smallest_micro_batch)
        else:
            allocation = solve_planned(problem) if self.plans_checkpointing else solve(problem)
        if allocation is None:  # check_budgets rules this out before the first round
            raise nothing_fits(cost_model, client.cid, client.budget_bytes, self.context.memory_margin)
        return self.keep_previous(client.cid, allocation, cost_model, values, usable)

    def allocate_nested(self, clients: Sequence[ClientInfo]) -> dict[int, Allocation]:
        """The round's allocations under ``nesting: round`` (fedpilot.planning.nesting): the clients by
        decreasing usable budget, each the exact optimum within the next richer client's set, the
        stability rule applied within that set. A client without a budget trains every module (a
        superset of every set) and is left out of the nesting; ``self.nesting`` keeps each planned
        client's :class:`Nested` (whose set bounded it, or ``fallback`` where none of it fitted)."""
        problems, unbounded = {}, {}
        for client in clients:
            if client.budget_bytes is None:
                unbounded[client.cid] = self.allocate(client)
                continue
            cost_model = self.allocation_cost_model(client)
            if not fits_something(cost_model, client.budget_bytes, self.context.memory_margin):  # check_budgets rules this out
                raise nothing_fits(cost_model, client.cid, client.budget_bytes, self.context.memory_margin)
            problems[client.cid] = Problem(self.context.usable(client.budget_bytes), cost_model, self.module_values(client.cid))
        self.nesting = nested_allocations(problems, self.keep_within)
        return {**unbounded, **{cid: placed.allocation for cid, placed in self.nesting.items()}}

    def keep_within(self, cid: int, new: Allocation, problem: Problem) -> Allocation:
        """The stability rule inside the nesting: the previous set only when it lies within ``problem``'s
        (the client's allowed) modules, then as :meth:`keep_previous`."""
        previous = self.trained.get(cid)
        if previous is not None and not set(previous) <= set(problem.cost_model.module):
            return new
        return self.keep_previous(cid, new, problem.cost_model, problem.values, problem.budget_bytes)

    def keep_previous(self, cid: int, new: Allocation, cost_model: CostModel, values: Mapping[str, float], usable: int) -> Allocation:
        """The stability rule (``keep_margin`` mu): the client's previous set A' instead of the optimum A*
        when A' still fits and IG(A*) <= (1 + mu) * IG(A'), both under today's ``values`` (A' checkpointed
        when it fits only so and checkpointing is planned)."""
        margin, previous = self.options.keep_margin, self.trained.get(cid)
        if margin is None or previous is None:
            return new
        checkpointing = False
        cost = cost_model.cost(previous)
        if cost > usable and self.plans_checkpointing:
            checkpointing, cost = True, cost_model.cost(previous, checkpointing=True)
        value = sum(values[m] for m in previous)
        if cost > usable or new.value > (1 + margin) * value:
            return new
        return Allocation(list(previous), cost, value, new.solve_ms, checkpointing=checkpointing)

    def allocation_value(self, cid: int) -> float | None:
        return self.allocations[cid].value if cid in self.allocations else None

    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        aggregated = self.aggregate_modules(global_tensors, updates)
        self.global_change.observe_round(global_tensors, aggregated, coverage(updates, self.context.module_keys, self.context.modules))
        return aggregated

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "local_scores": {str(cid): dict(scores) for cid, scores in self.local_scores.items()},
            "global_change": self.global_change.state_dict(),
            "compensation": self.compensation.state_dict(),
            "trained": {str(cid): list(modules) for cid, modules in self.trained.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.local_scores = {int(cid): {m: float(v) for m, v in scores.items()} for cid, scores in state["local_scores"].items()}
        self.global_change.load_state_dict(state["global_change"])
        self.compensation.load_state_dict(state["compensation"])
        self.trained = {int(cid): tuple(modules) for cid, modules in state.get("trained", {}).items()}  # absent before keep_margin
