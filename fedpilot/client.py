"""What one client does in a round: train its assigned LoRA modules on its own shard.

Transport-free: the simulator calls :meth:`Client.train` directly, a Flower ClientApp would call
the same method with tensors unpacked from its message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedpilot.config import TrainSettings
from fedpilot.data import TokenizedSplit
from fedpilot.memory.measure import PeakMeter, release_gradients
from fedpilot.models import LoraModel, TensorDict, tensor_bytes

T = TypeVar("T")


@dataclass(frozen=True)
class TrainInstructions:
    """What the server tells a client about local training: plain scalars, so they travel in any message."""

    local_steps: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    seed: int

    @classmethod
    def from_settings(cls, settings: TrainSettings, seed: int) -> TrainInstructions:
        return cls(
            local_steps=settings.local_steps,
            batch_size=settings.batch_size,
            optimizer=settings.optimizer,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            seed=seed,
        )

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def make_optimizer(params: Sequence[torch.nn.Parameter], config: TrainInstructions) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def batch_indices(num_samples: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """``steps`` batches drawn by walking shuffled epochs of the shard (a batch may span two epochs)."""
    batch_size = min(batch_size, num_samples)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(num_samples, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def batch_loss(model: LoraModel, data: TokenizedSplit, idx: Tensor) -> Tensor:
    """Cross-entropy of the model on the rows ``idx`` of ``data``, computed on the model's device."""
    device = model.device
    logits = model.logits(data.input_ids[idx].to(device), data.attention_mask[idx].to(device))
    return F.cross_entropy(logits, data.labels[idx].to(device))


def training_step(model: LoraModel, optimizer: torch.optim.Optimizer, data: TokenizedSplit, idx: Tensor) -> float:
    """One forward, backward and optimiser step on the rows ``idx`` of ``data``; returns the loss."""
    loss = batch_loss(model, data, idx)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@dataclass(frozen=True)
class ScoreInstructions:
    """How a client computes its local information terms: a few batches of squared gradients."""

    batches: int
    batch_size: int
    seed: int


class StepPeaks:
    """Measured peak bytes of client steps, by (kind of step, trainable set, batch rows).

    The peak of a step is fixed by what it does, what trains and the batch's shape, so each
    distinct step is profiled once (profiling is slow) and every later one of the same kind reuses it.
    """

    def __init__(self) -> None:
        self._peaks: dict[tuple[str, frozenset[str], int], int] = {}

    def get(self, kind: str, modules: Sequence[str], rows: int) -> int | None:
        return self._peaks.get((kind, frozenset(modules), rows))

    def put(self, kind: str, modules: Sequence[str], rows: int, peak: int) -> None:
        self._peaks[(kind, frozenset(modules), rows)] = peak

    def run(self, kind: str, modules: Sequence[str], rows: int, device: torch.device, step: Callable[[], T]) -> T:
        """Run ``step``, under the meter if no identical step was measured yet."""
        if self.get(kind, modules, rows) is not None:
            return step()
        with PeakMeter(device) as meter:
            result = step()
        self.put(kind, modules, rows, meter.peak_bytes)
        return result


class Client:
    """A federation member: its shard of the train split, and a handle on the shared model."""

    def __init__(self, cid: int, model: LoraModel, data: TokenizedSplit, peaks: StepPeaks | None = None) -> None:
        self.cid = cid
        self.model = model
        self.data = data
        self.peaks = peaks

    @property
    def num_samples(self) -> int:
        return len(self.data)

    def train(
        self, assigned_modules: Sequence[str], global_tensors: TensorDict, config: TrainInstructions
    ) -> tuple[TensorDict, dict[str, float | int]]:
        """Load the global adapter, train ``assigned_modules`` (and the head), return only what trained.

        The optimiser state is fresh each round: a client keeps nothing between rounds but its data.
        With ``peaks`` set, the last local step (optimiser state in place) is measured at the
        allocator unless an identical step already was, and ``peak_bytes`` joins the metrics.
        """
        start = time.perf_counter()
        model = self.model
        model.load_state(global_tensors)
        params = model.set_trainable(assigned_modules)
        optimizer = make_optimizer(params, config)
        torch.manual_seed(config.seed)  # LoRA dropout
        generator = torch.Generator().manual_seed(config.seed)
        model.peft.train()
        batches = list(batch_indices(self.num_samples, config.batch_size, config.local_steps, generator))
        rows = len(batches[-1])
        losses = [training_step(model, optimizer, self.data, idx) for idx in batches[:-1]]
        last = partial(training_step, model, optimizer, self.data, batches[-1])
        if self.peaks is None:
            losses.append(last())
        else:
            release_gradients(optimizer)
            losses.append(self.peaks.run("train", assigned_modules, rows, model.device, last))
        trained = model.state(model.keys_for(assigned_modules))
        metrics: dict[str, float | int] = {
            "train_loss": float(np.mean(losses)),
            "num_samples": self.num_samples,
            "steps": len(losses),
            "upload_bytes": tensor_bytes(trained),
            "seconds": time.perf_counter() - start,
        }
        if self.peaks is not None:
            metrics["peak_bytes"] = self.peaks.get("train", assigned_modules, rows)
        return trained, metrics

    def score(
        self, modules: Sequence[str], global_tensors: TensorDict, config: ScoreInstructions
    ) -> tuple[dict[str, float], dict[str, float | int]]:
        """Empirical Fisher information of each module's LoRA parameters on this client's data.

        The mean squared gradient per parameter over ``config.batches`` batches (dropout off).
        Backpropagating into ``modules`` costs at most what training them does, so the server
        asks only for modules the client can afford.
        """
        start = time.perf_counter()
        model = self.model
        model.load_state(global_tensors)
        model.set_trainable(modules)
        model.peft.eval()
        generator = torch.Generator().manual_seed(config.seed)
        squared = {m: 0.0 for m in modules}

        def backward(idx: Tensor) -> None:
            batch_loss(model, self.data, idx).backward()

        batches = list(batch_indices(self.num_samples, config.batch_size, config.batches, generator))
        for i, idx in enumerate(batches):
            for param in model.params.values():
                param.grad = None
            if self.peaks is not None and i == len(batches) - 1:
                self.peaks.run("score", modules, len(idx), model.device, partial(backward, idx))
            else:
                backward(idx)
            for m in modules:
                squared[m] += sum(float((model.params[k].grad.double() ** 2).sum()) for k in model.module_keys[m])
        model.set_trainable([])
        sizes = {m: sum(model.params[k].numel() for k in model.module_keys[m]) for m in modules}
        scores = {m: squared[m] / (sizes[m] * len(batches)) for m in modules}
        metrics: dict[str, float | int] = {"seconds": time.perf_counter() - start, "scored": len(modules)}
        if self.peaks is not None:
            metrics["peak_bytes"] = self.peaks.get("score", modules, len(batches[-1]))
        return scores, metrics
