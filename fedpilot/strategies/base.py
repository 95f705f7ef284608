"""The strategy contract, in the shape of Flower's: configure a round, then aggregate its results.

A strategy sees only module names, client descriptions, a cost model and named tensors, never a
model or a transport, so the simulator and a Flower ServerApp drive the same object. A round has
an optional scoring phase (``configure_score`` / ``aggregate_score``: clients report per-module
information) and a training phase (``configure_train`` / ``aggregate_train``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fedpilot.config import StrictModel
from fedpilot.memory.costmodel import CostModel
from fedpilot.models import TensorDict


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows of a client before a round."""

    cid: int
    num_samples: int
    budget_bytes: int | None = None


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sent back after training: the tensors it trained and its metrics."""

    cid: int
    num_samples: int
    tensors: TensorDict
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientScores:
    """What a client sent back after scoring: a number per module it was asked about."""

    cid: int
    scores: Mapping[str, float]


@dataclass(frozen=True)
class FederationContext:
    """The model's module layout and memory cost model, as strategies need them."""

    modules: Sequence[str]
    module_keys: Mapping[str, Sequence[str]]
    num_layers: int
    cost_model: CostModel


class NoOptions(StrictModel):
    """A strategy without options."""


class Strategy(ABC):
    """Decides each client's trainable LoRA modules and turns client updates into the next global state."""

    Options: ClassVar[type[StrictModel]] = NoOptions
    score_batches: int = 1  # batches a client scores on, when configure_score asks it to

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        self.context = context
        self.options = options if options is not None else self.Options()

    def configure_score(
        self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict
    ) -> dict[int, list[str]]:
        """The modules each client should score before training this round (none by default)."""
        return {}

    def aggregate_score(self, server_round: int, scores: Sequence[ClientScores]) -> None:
        """Take in the clients' scores (ignored by default)."""

    def allocation_value(self, cid: int) -> float | None:
        """The value of what the client was last allocated, for strategies that value modules."""
        return None

    @abstractmethod
    def configure_train(
        self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict
    ) -> dict[int, list[str]]:
        """The LoRA modules each selected client trains this round, by client id; absent clients sit out."""

    @abstractmethod
    def aggregate_train(
        self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]
    ) -> TensorDict:
        """The new global tensors after this round's updates."""
