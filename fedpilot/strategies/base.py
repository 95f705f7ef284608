"""The strategy contract, in the shape of Flower's: configure a round, then aggregate its results.

A strategy sees only module names, client descriptions and named tensors, never a model or a
transport, so the simulator and a Flower ServerApp drive the same object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedpilot.models import TensorDict


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows of a client before a round."""

    cid: int
    num_samples: int
    budget_bytes: int | None = None


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sent back: the tensors it trained and its metrics."""

    cid: int
    num_samples: int
    tensors: TensorDict
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FederationContext:
    """The model's module layout, as strategies need it."""

    modules: Sequence[str]
    module_keys: Mapping[str, Sequence[str]]
    num_layers: int


class Strategy(ABC):
    """Decides each client's trainable LoRA modules and turns client updates into the next global state."""

    def __init__(self, context: FederationContext) -> None:
        self.context = context

    @abstractmethod
    def configure_train(
        self, server_round: int, clients: Sequence[ClientInfo], global_tensors: TensorDict
    ) -> dict[int, list[str]]:
        """The LoRA modules each selected client trains this round, by client id."""

    @abstractmethod
    def aggregate_train(
        self, server_round: int, global_tensors: TensorDict, updates: Sequence[ClientUpdate]
    ) -> TensorDict:
        """The new global tensors after this round's updates."""
