"""The position-aware memory cost of training a set of LoRA modules, calibrated on the real model.

    cost(S) = fixed + activation[lowest layer of S] + sum over m in S of module[m]

``fixed`` is what every step pays (weights, the head and its optimiser state, forward-pass
buffers); ``activation[l]`` is what backpropagation from the loss down to layer l stores;
``module[m]`` is what module m adds (parameters, gradients, optimiser state, its own saved inputs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from fedpilot.errors import FedpilotError
from fedpilot.memsize import mib
from fedpilot.models import module_layer


@dataclass(frozen=True)
class CostModel:
    fixed: int
    activation: tuple[int, ...]
    module: Mapping[str, int]
    source: str = "calibrated"
    settings: Mapping[str, object] = field(default_factory=dict)

    def cost(self, modules: Iterable[str]) -> int:
        """Predicted peak bytes of a training step that trains ``modules`` (and the head)."""
        chosen = list(modules)
        if not chosen:
            return self.fixed
        lowest = min(module_layer(m) for m in chosen)
        return self.fixed + self.activation[lowest] + sum(self.module[m] for m in chosen)

    def cheapest(self) -> tuple[str, int]:
        """The cheapest trainable set (one module) and its cost."""
        best = min(self.module, key=lambda m: self.cost([m]))
        return best, self.cost([best])

    def full(self) -> int:
        return self.cost(self.module)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "settings": dict(self.settings),
            "fixed": self.fixed,
            "activation": list(self.activation),
            "module": dict(self.module),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CostModel:
        return cls(
            fixed=int(data["fixed"]),
            activation=tuple(int(a) for a in data["activation"]),
            module={str(k): int(v) for k, v in dict(data["module"]).items()},
            source=str(data.get("source", "calibrated")),
            settings=dict(data.get("settings", {})),
        )


def check_budgets(cost_model: CostModel, budgets: Sequence[int | None]) -> None:
    """Fail when a client's budget cannot fit even the cheapest trainable set (one module and the head)."""
    cheapest, cheapest_cost = cost_model.cheapest()
    for cid, budget in enumerate(budgets):
        if budget is not None and budget < cheapest_cost:
            below = "the fixed cost" if budget < cost_model.fixed else "the cheapest trainable set"
            raise FedpilotError(
                f"federation.budgets: client {cid} has {mib(budget):.1f} MiB, below {below}: "
                f"training {cheapest} alone needs {mib(cheapest_cost):.1f} MiB (fixed {mib(cost_model.fixed):.1f} MiB); "
                f"raise its budget or lower train.batch_size / data.max_length"
            )
