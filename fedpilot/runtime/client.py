"""What one client does in a round: train its assignment, or score modules, on its own shard.

Transport-free: the in-process transport calls :meth:`Client.train` directly; a Flower ClientApp
calls the same method with tensors unpacked from its message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from fedpilot.core.tensors import TensorDict, tensor_bytes
from fedpilot.data.split import TensorSplit
from fedpilot.memory.measure import PeakMeter, release_gradients
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import ScoreInstructions, TrainInstructions
from fedpilot.runtime.training import batch_indices, batch_loss, make_optimizer, training_step
from fedpilot.strategies.base import Assignment

T = TypeVar("T")


class StepPeaks:
    """Measured peak bytes of client steps, by (kind of step, what trains, batch rows).

    The peak of a step is fixed by what it does, what trains (modules, ranks, parts) and the batch's
    shape, so each distinct step is profiled once (profiling is slow) and every later one of the
    same kind reuses it.
    """

    def __init__(self) -> None:
        self._peaks: dict[tuple[str, Hashable, int], int] = {}

    def get(self, kind: str, what: Hashable, rows: int) -> int | None:
        return self._peaks.get((kind, what, rows))

    def put(self, kind: str, what: Hashable, rows: int, peak: int) -> None:
        self._peaks[(kind, what, rows)] = peak

    def run(self, kind: str, what: Hashable, rows: int, device: torch.device, step: Callable[[], T]) -> T:
        """Run ``step``, under the meter if no identical step was measured yet."""
        if self.get(kind, what, rows) is not None:
            return step()
        with PeakMeter(device) as meter:
            result = step()
        self.put(kind, what, rows, meter.peak_bytes)
        return result


def trainable_signature(assignment: Assignment) -> Hashable:
    """What determines a training step's memory besides the batch: modules, their ranks, trained parts."""
    return frozenset(assignment.modules), frozenset(assignment.ranks.items()), assignment.parts


class Client:
    """A federation member: its shard of the train split, and a handle on the (shared) model."""

    def __init__(self, cid: int, model: LoraModel, data: TensorSplit, peaks: StepPeaks | None = None) -> None:
        self.cid = cid
        self.model = model
        self.data = data
        self.peaks = peaks

    @property
    def num_samples(self) -> int:
        return len(self.data)

    def receive(self, tensors: TensorDict, ranks: dict[str, int] | None = None) -> None:
        """Set the modules' ranks and load a complete adapter (every LoRA tensor and the head).

        A payload that lacks a tensor is refused: on a shared model the missing tensor would hold
        whatever the previous client left there.
        """
        missing = set(self.model.tensor_keys) - set(tensors)
        if missing:
            raise ValueError(f"client {self.cid}: the payload lacks {len(missing)} tensors, e.g. {sorted(missing)[0]!r}")
        self.model.set_ranks(ranks or {})
        self.model.load_state(tensors)

    def train(self, assignment: Assignment, tensors: TensorDict, config: TrainInstructions) -> tuple[TensorDict, dict[str, float | int]]:
        """Load the received adapter, train the assigned modules' parts (and the head), return only what trained.

        The optimiser state is fresh each round: a client keeps nothing between rounds but its data.
        With ``peaks`` set, the last local step (optimiser state in place) is measured at the
        allocator unless an identical step already was, and ``peak_bytes`` joins the metrics.
        """
        start = time.perf_counter()
        model = self.model
        self.receive(tensors, dict(assignment.ranks))
        params = model.set_trainable(assignment.modules, assignment.parts)
        optimizer = make_optimizer(params, config)
        torch.manual_seed(config.seed)  # LoRA dropout
        generator = torch.Generator().manual_seed(config.seed)
        model.peft.train()
        batches = list(batch_indices(self.num_samples, config.batch_size, config.local_steps, generator))
        rows = len(batches[-1])
        losses = [training_step(model, optimizer, self.data, idx) for idx in batches[:-1]]
        last = partial(training_step, model, optimizer, self.data, batches[-1])
        what = trainable_signature(assignment)
        if self.peaks is None:
            losses.append(last())
        else:
            release_gradients(optimizer)
            losses.append(self.peaks.run("train", what, rows, model.device, last))
        trained = model.state(model.keys_for(assignment.modules, assignment.parts))
        model.set_trainable([])
        metrics: dict[str, float | int] = {
            "train_loss": float(np.mean(losses)),
            "num_samples": self.num_samples,
            "steps": len(losses),
            "batch_rows": rows,
            "upload_bytes": tensor_bytes(trained),
            "seconds": time.perf_counter() - start,
        }
        if self.peaks is not None:
            metrics["peak_bytes"] = self.peaks.get("train", what, rows)
        return trained, metrics

    def score(self, modules: Sequence[str], tensors: TensorDict, config: ScoreInstructions) -> tuple[dict[str, float], dict[str, float | int]]:
        """Empirical Fisher information of each module's LoRA parameters on this client's data.

        The mean squared gradient per parameter over ``config.batches`` batches (dropout off).
        Backpropagating into ``modules`` costs at most what training them does, so the server
        asks only for modules the client can afford.
        """
        start = time.perf_counter()
        model = self.model
        self.receive(tensors)
        model.set_trainable(modules)
        model.peft.eval()
        generator = torch.Generator().manual_seed(config.seed)
        squared = {m: 0.0 for m in modules}

        def backward(idx: Tensor) -> None:
            batch_loss(model, self.data, idx).backward()

        what = frozenset(modules)
        batches = list(batch_indices(self.num_samples, config.batch_size, config.batches, generator))
        for i, idx in enumerate(batches):
            for param in model.params.values():
                param.grad = None
            if self.peaks is not None and i == len(batches) - 1:
                self.peaks.run("score", what, len(idx), model.device, partial(backward, idx))
            else:
                backward(idx)
            for m in modules:
                squared[m] += sum(float((model.params[k].grad.double() ** 2).sum()) for k in model.module_keys[m])
        model.set_trainable([])
        sizes = {m: sum(model.params[k].numel() for k in model.module_keys[m]) for m in modules}
        scores = {m: squared[m] / (sizes[m] * len(batches)) for m in modules}
        metrics: dict[str, float | int] = {"seconds": time.perf_counter() - start, "scored": len(modules)}
        if self.peaks is not None:
            metrics["peak_bytes"] = self.peaks.get("score", what, len(batches[-1]))
        return scores, metrics
