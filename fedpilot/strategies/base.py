"""The strategy contract, in the shape of Flower's: sample clients, configure a round, aggregate it.

A strategy sees client descriptions, the model's module layout, a cost model and named numpy
tensors, never a model or a transport, so the simulator and a Flower ServerApp drive the same
object. A round is:

1. ``sample``: which of the available clients take part (uniform without replacement by default);
2. optional scoring: ``configure_score`` asks clients for per-module information, ``aggregate_score``
   takes it in;
3. ``configure_train``: an :class:`Assignment` per client: the modules it trains, their LoRA ranks,
   which parts (A, B or both) train, and the tensors it receives;
4. ``aggregate_train``: the next global tensors from the (validated) updates.

``check_budgets`` runs once before the first round and must fail exactly when some later round
could not be planned. ``state_dict`` / ``load_state_dict`` carry what the strategy remembers between
rounds (numpy arrays and JSON values), so a checkpoint covers every strategy.

What a strategy is, as the rest of fedpilot needs to know it (whether it plans within budgets, whether
it needs the server's proxy set, what its global state holds, which options it reads), is one declared
:class:`Capabilities` per strategy class, ``capabilities``; drivers and the server read that, never a
strategy's name (tests/test_capabilities.py checks each declaration against behaviour).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedpilot.core.keys import HEAD, LORA_PARTS, check_parts, rank_axis, tensor_key
from fedpilot.core.settings import StrictModel
from fedpilot.core.tensors import TensorDict
from fedpilot.planning.costmodel import CostModel, fits_something, nothing_fits, usable


#: What a strategy's aggregated tensors are (:attr:`Capabilities.payload`):
PAYLOADS: dict[str, str] = {
    "lora": "LoRA factors A and B (and the head), aggregated factor by factor",
    "lora_b": "LoRA factors B only (and the head); every A stays frozen at its initialisation",
    "lora+base_delta": "LoRA factors and a dense '<module>/base_delta' per module, merged into the frozen weights",
    "products": "LoRA factors at the clients' own ranks, aggregated as their products B A and factorised again",
}


@dataclass(frozen=True)
class Capabilities:
    """What a strategy class is, declared once as its ``capabilities`` and read by everything outside it.

    ``memory_aware``: it plans every client within its budget (False: results say it ignores budgets).
    ``per_client_assignment``: clients of one round may train different module sets.
    ``rank_heterogeneous``: clients may train at LoRA ranks below the global one (``Assignment.ranks``).
    ``needs_proxy``: it scores modules on the server's proxy set (the driver must offer one), holding
    ``proxy_default_fraction`` of each class out unless ``data.proxy_fraction`` says otherwise.
    ``base_deltas``: its global state also holds ``"<module>/base_delta"`` (merges into frozen weights).
    ``payload``: what its aggregated tensors are, a key of :data:`PAYLOADS`.
    ``options``: the option names it actually reads (None: every field of its ``Options``); a finished
    run made under other values of the others is the same run (`fedpilot compare` keeps it).
    """

    memory_aware: bool
    per_client_assignment: bool
    rank_heterogeneous: bool
    needs_proxy: bool = False
    proxy_default_fraction: float = 0.002
    base_deltas: bool = False
    payload: str = "lora"
    options: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.payload not in PAYLOADS:
            raise ValueError(f"capabilities: payload {self.payload!r} is not one of {', '.join(PAYLOADS)}")
        if self.base_deltas != (self.payload == "lora+base_delta"):
            raise ValueError(f"capabilities: base_deltas={self.base_deltas} contradicts payload {self.payload!r}")
        if not 0 < self.proxy_default_fraction < 1:
            raise ValueError(f"capabilities: proxy_default_fraction must lie in (0, 1), got {self.proxy_default_fraction}")
        if self.options is not None:
            if isinstance(self.options, str) or not all(isinstance(o, str) for o in self.options):
                raise ValueError(f"capabilities: options must be a set of option names, got {self.options!r}")
            object.__setattr__(self, "options", frozenset(self.options))


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows of a client before a round. ``cid`` is an id, not a position.

    ``cost_model``: the memory cost model the client calibrated on its own device (a Flower node
    reports it); None: the federation's shared one plans it (the simulator, one machine).
    ``num_test_samples``: the rows it holds out to evaluate the global adapter on (``data.client_test_fraction``;
    0: none); ``num_samples`` counts the rows it trains on only.
    """

    cid: int
    num_samples: int
    budget_bytes: int | None = None
    cost_model: CostModel | None = None
    num_test_samples: int = 0


@dataclass(frozen=True)
class Assignment:
    """What one client trains in a round.

    ``ranks`` gives a module's LoRA rank where it differs from the global one; ``parts`` says which
    LoRA matrices train (the others stay frozen and are not sent back); ``tensors`` is what the
    client receives (None: the global adapter, every module and the head, since frozen modules
    take part in the forward pass). The head, where the family has one, always trains.
    ``checkpointing``: the client's step recomputes the blocks from its lowest trained layer up
    instead of storing their activations (less memory, a slower step; planned by the cost model).
    ``micro_batch``: the client runs each batch as micro-batches of this many rows and accumulates their
    gradients before the optimiser step (the same step, less memory, slower; 0: the whole batch at once).
    """

    modules: tuple[str, ...]
    ranks: Mapping[str, int] = field(default_factory=dict)
    parts: tuple[str, ...] = LORA_PARTS
    tensors: TensorDict | None = None
    checkpointing: bool = False
    micro_batch: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        object.__setattr__(self, "parts", check_parts(self.parts))
        stray = set(self.ranks) - set(self.modules)
        if stray:
            raise ValueError(f"assignment gives ranks to modules it does not train: {sorted(stray)}")
        if any(r < 1 for r in self.ranks.values()):
            raise ValueError(f"assignment ranks must be >= 1, got {dict(self.ranks)}")
        if self.micro_batch < 0:
            raise ValueError(f"assignment micro_batch must be >= 0 (0: the whole batch), got {self.micro_batch}")

    def predicted_bytes(self, cost_model: CostModel) -> int:
        """What ``cost_model`` predicts this assignment's step peaks at: its modules at their ranks, checkpointed or
        in micro-batches as it says (:meth:`CostModel.at_batch`)."""
        priced = cost_model.at_batch(self.micro_batch) if self.micro_batch else cost_model
        return priced.cost(self.modules, self.ranks, self.checkpointing)


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back after training (the reply every transport carries, and what
    :meth:`Strategy.aggregate_train` receives once validated): the tensors it trained and its metrics."""

    cid: int
    num_samples: int
    tensors: TensorDict
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientScores:
    """What a client sends back after scoring (the reply every transport carries, and what
    :meth:`Strategy.aggregate_score` receives): a number per module it was asked about, and its metrics."""

    cid: int
    scores: Mapping[str, float]
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FederationContext:
    """The model's module layout and memory cost model, and the federation's sampling settings."""

    modules: Sequence[str]
    module_keys: Mapping[str, Sequence[str]]  # module (and "head") -> its tensor keys
    shapes: Mapping[str, tuple[int, ...]]  # tensor key -> shape at the global rank
    num_layers: int
    rank: int
    cost_model: CostModel
    memory_margin: float = 0.0
    clients_per_round: int | None = None
    seed: int = 0
    scaling: float = 1.0  # LoRA's alpha / rank: a module's update is scaling * B @ A
    micro_batch: int = 0  # train.micro_batch: every client's step runs in micro-batches of this many rows (0: whole batch)

    @property
    def head_keys(self) -> list[str]:
        return list(self.module_keys.get(HEAD, []))

    def cost_model_for(self, client: ClientInfo) -> CostModel:
        """The cost model that plans and checks ``client``: its own (calibrated on its device), else the federation's.

        Every memory-aware strategy prices a client's work with this, never with ``cost_model`` directly. With
        ``micro_batch`` set (train.micro_batch) it is that model at the micro-batch (:meth:`CostModel.at_batch`),
        since every client's step then runs so.
        """
        model = self.whole_batch_cost_model(client)
        return model.at_batch(self.micro_batch) if self.micro_batch else model

    def whole_batch_cost_model(self, client: ClientInfo) -> CostModel:
        """The client's cost model at its whole batch, whatever ``micro_batch``: its own, else the federation's
        (what :meth:`Assignment.predicted_bytes` scales to the assignment's micro-batch)."""
        return client.cost_model if client.cost_model is not None else self.cost_model

    def usable(self, budget: int) -> int:
        """The part of ``budget`` planners may fill (the margin absorbs the cost model's error)."""
        return usable(budget, self.memory_margin)

    def expected_shape(self, key: str, rank: int | None) -> tuple[int, ...]:
        """The shape of tensor ``key`` at LoRA rank ``rank`` (None: the global rank)."""
        shape = list(self.shapes[key])
        axis = rank_axis(key)
        if rank is not None and axis is not None:
            shape[axis] = rank
        return tuple(shape)

    def reply_keys(self, assignment: Assignment) -> list[str]:
        """The tensor keys a client sends back for ``assignment``: its trained parts and the head."""
        return [tensor_key(m, p) for m in assignment.modules for p in assignment.parts] + self.head_keys


def derived_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (run seed, round, client), so runs replay exactly."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


class NoOptions(StrictModel):
    """A strategy without options."""


#: class attributes that once declared capabilities one by one: a subclass setting one is refused
_CAPABILITY_FIELDS = frozenset({"memory_aware", "base_deltas", "needs_proxy", "proxy_default_fraction"})


class Strategy(ABC):
    """Decides who trains which LoRA modules each round and turns their updates into the next global state.

    Every concrete strategy declares its own ``capabilities`` (a subclass does not silently inherit
    its parent's: tests/test_capabilities.py requires each registered class to state them).
    """

    Options: ClassVar[type[StrictModel]] = NoOptions
    capabilities: ClassVar[Capabilities]
    # per-instance tunables (from the options), read by the server when it asks clients to score:
    score_batches: int = 1  # batches a client scores on, when configure_score asks it to
    score_trained_loss: bool = False  # clients score on the loss they train on (train.logit_adjustment), else the plain one

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        stray = _CAPABILITY_FIELDS & set(vars(cls))
        if stray:
            raise TypeError(f"{cls.__name__} sets {sorted(stray)} as class attributes; declare them in its capabilities = Capabilities(...)")

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        self.context = context
        self.options = options if options is not None else self.Options()

    def cost_model_for(self, client: ClientInfo) -> CostModel:
        """The cost model that plans ``client`` (:meth:`FederationContext.cost_model_for`)."""
        return self.context.cost_model_for(client)

    # -- before the first round ----------------------------------------------------------------------
    def check_budgets(self, clients: Sequence[ClientInfo]) -> None:
        """Fail (one line) when a client's budget could make a later round impossible to plan.

        Default, for strategies that give every client something to train: each usable budget must
        fit the cheapest trainable set under the client's cost model (:meth:`cost_model_for`).
        """
        if not self.capabilities.memory_aware:
            return
        for client in clients:
            cost_model = self.cost_model_for(client)
            if not fits_something(cost_model, client.budget_bytes, self.context.memory_margin):
                raise nothing_fits(cost_model, client.cid, client.budget_bytes, self.context.memory_margin)

    # -- each round ----------------------------------------------------------------------------------
    def sample(self, server_round: int, clients: Sequence[ClientInfo]) -> list[ClientInfo]:
        """The clients that take part this round: ``clients_per_round`` drawn without replacement
        (seeded by run seed and round), or every client."""
        wanted = self.context.clients_per_round
        if wanted is None or wanted >= len(clients):
            return list(clients)
        rng = np.random.default_rng(derived_seed(self.context.seed, server_round))
        chosen = sorted(rng.choice(len(clients), size=wanted, replace=False))
        return [clients[i] for i in chosen]

    def configure_score(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, list[str]]:
        """The modules each client should score before training this round (none by default)."""
        return {}

    def score_micro_batch(self, client: ClientInfo) -> int:
        """The micro-batch ``client`` scores in (the gradient of each scored batch accumulated over micro-batches of
        this many rows; what its score request must be priced at): train.micro_batch (0: the whole batch)."""
        return self.context.micro_batch

    def aggregate_score(self, server_round: int, scores: Sequence[ClientScores]) -> None:
        """Take in the clients' scores (ignored by default)."""

    def configure_proxy(self, server_round: int) -> bool:
        """Whether the server should score every module on its proxy set before this round's
        assignments (only strategies whose capabilities have ``needs_proxy``; never by default)."""
        return False

    def aggregate_proxy(self, server_round: int, scores: Mapping[str, float]) -> None:
        """Take in the server's per-module scores on its proxy set (see :meth:`configure_proxy`)."""

    @abstractmethod
    def configure_train(self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict) -> dict[int, Assignment]:
        """What each sampled client trains this round, by client id; absent clients sit out."""

    @abstractmethod
    def aggregate_train(self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        """The new global tensors after this round's updates (already validated against their assignments)."""

    # -- reporting and checkpoints -------------------------------------------------------------------
    def allocation_value(self, cid: int) -> float | None:
        """The value of what the client was last allocated, for strategies that value modules."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the strategy remembers between rounds: JSON values and numpy arrays (empty by default)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


def accepted_options(strategy_cls: type[Strategy]) -> frozenset[str]:
    """The option names ``strategy_cls`` reads: its capabilities' ``options``, else every field of its Options."""
    declared = strategy_cls.capabilities.options
    return frozenset(strategy_cls.Options.model_fields) if declared is None else declared
