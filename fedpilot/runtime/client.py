"""What one client does in a round: train its assignment, or score modules, on its own shard, or evaluate
the global adapter on its held-out rows.

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

from fedpilot.core.keys import HEAD, module_of
from fedpilot.core.tensors import TensorDict, tensor_bytes
from fedpilot.data.split import TensorSplit
from fedpilot.runtime.client_evaluation import EvalCounts
from fedpilot.runtime.evaluation import count_split
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.measure import PeakMeter, optimizer_tensors, release_gradients
from fedpilot.runtime.messages import EvaluateInstructions, ScoreInstructions, TrainInstructions
from fedpilot.runtime.training import accumulate_gradients, batch_indices, label_offset, make_optimizer, training_step
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

    def run(
        self, kind: str, what: Hashable, rows: int, device: torch.device, step: Callable[[], T],
        resident: Callable[[], list[Tensor]] | None = None,
    ) -> T:
        """Run ``step``, under the meter if no identical step was measured yet.

        ``resident``: what is alive across the step (the meter's starting point; see :class:`PeakMeter`)."""
        if self.get(kind, what, rows) is not None:
            return step()
        with PeakMeter(device, resident=None if resident is None else resident()) as meter:
            result = step()
        self.put(kind, what, rows, meter.peak_bytes)
        return result


def trainable_signature(assignment: Assignment) -> Hashable:
    """What determines a training step's memory besides the batch: modules, their ranks, trained parts, checkpointing, micro-batch."""
    return frozenset(assignment.modules), frozenset(assignment.ranks.items()), assignment.parts, assignment.checkpointing, assignment.micro_batch


EVALUATION_STEP = "merged"  # StepPeaks' "what" of an evaluation pass: every module merged, nothing trains


class Client:
    """A federation member: its shard of the train split (``data``: the rows it trains on; ``test_data``: the
    rows it holds out to evaluate on, ``data.client_test_fraction``, or None), and a handle on the (shared) model."""

    def __init__(
        self, cid: int, model: LoraModel, data: TensorSplit, peaks: StepPeaks | None = None, test_data: TensorSplit | None = None
    ) -> None:
        self.cid = cid
        self.model = model
        self.data = data
        self.peaks = peaks
        self.test_data = test_data

    @property
    def num_samples(self) -> int:
        return len(self.data)

    @property
    def num_test_samples(self) -> int:
        """Held-out rows it evaluates on (0: none)."""
        return 0 if self.test_data is None else len(self.test_data)

    def receive(self, tensors: TensorDict, ranks: dict[str, int] | None = None, payload: str = "full") -> None:
        """Set the modules' ranks and load the received adapter.

        ``payload == "full"`` (federation.payload): the payload must be complete (every LoRA tensor, the
        head, base deltas if any); one that lacks a tensor is refused, since on a shared model the missing
        tensor would hold whatever the previous client left there.

        ``payload == "assigned"``: the payload holds the head and, for each module it names, every tensor
        of that module; a module it does not name runs as the base model: all its tensors (LoRA A and B,
        base delta) are set to zero here, explicitly, so it contributes nothing to the forward pass,
        whatever the model held before. A partial module or a missing head is refused.
        """
        keys = set(tensors)
        if payload == "full":
            missing = set(self.model.tensor_keys) - keys
            if missing:
                raise ValueError(f"client {self.cid}: the payload lacks {len(missing)} tensors, e.g. {sorted(missing)[0]!r}")
            self.model.set_ranks(ranks or {})
            self.model.load_state(tensors)
            return
        if payload != "assigned":
            raise ValueError(f"client {self.cid}: unknown payload {payload!r}; expected 'full' or 'assigned'")
        unknown = keys - set(self.model.tensor_keys)
        if unknown:
            raise ValueError(f"client {self.cid}: the payload holds tensors this model lacks, e.g. {sorted(unknown)[0]!r}")
        by_module: dict[str, list[str]] = {}
        for key in self.model.tensor_keys:
            by_module.setdefault(module_of(key), []).append(key)
        missing_head = [k for k in by_module.get(HEAD, []) if k not in keys]
        if missing_head:
            raise ValueError(f"client {self.cid}: an assigned payload must carry the head; it lacks {missing_head[0]!r}")
        absent: list[str] = []
        for module, module_keys in by_module.items():
            held = [k for k in module_keys if k in keys]
            if held and len(held) < len(module_keys):
                lacking = sorted(set(module_keys) - set(held))[0]
                raise ValueError(f"client {self.cid}: the payload carries part of module {module!r} but lacks {lacking!r}")
            if not held:
                absent.extend(module_keys)
        stray = set(ranks or {}) - {module_of(k) for k in keys}
        if stray:
            raise ValueError(f"client {self.cid}: ranks given for modules the payload does not carry: {sorted(stray)}")
        self.model.set_ranks(ranks or {})
        zeros = {k: np.zeros_like(v) for k, v in self.model.state(absent).items()}
        self.model.load_state({**zeros, **tensors})

    def train(self, assignment: Assignment, tensors: TensorDict, config: TrainInstructions) -> tuple[TensorDict, dict[str, float | int]]:
        """Load the received adapter, train the assigned modules' parts (and the head), return only what trained.

        The optimiser state is fresh each round: a client keeps nothing between rounds but its data.
        Modules outside the assignment are folded for the call (:meth:`LoraModel.fold_frozen`: off
        the compute path, dropout-free, base weights untouched). With ``peaks`` set, the last local step (optimiser state in place) is measured at the
        allocator unless an identical step already was, and ``peak_bytes`` joins the metrics.
        """
        start = time.perf_counter()
        model = self.model
        self.receive(tensors, dict(assignment.ranks), config.payload)
        params = model.set_trainable(assignment.modules, assignment.parts)
        optimizer = make_optimizer(params, config)
        torch.manual_seed(config.seed)  # LoRA dropout
        generator = torch.Generator().manual_seed(config.seed)
        model.peft.train()
        batches = list(batch_indices(self.num_samples, config.batch_size, config.local_steps, generator))
        rows = len(batches[-1])
        what = trainable_signature(assignment)
        offset = label_offset(self.data.labels, model.num_labels, config.logit_adjustment)
        with model.fold_frozen(assignment.modules), model.checkpointed(assignment.modules, assignment.checkpointing):
            micro = assignment.micro_batch
            losses = [training_step(model, optimizer, self.data, idx, offset, micro) for idx in batches[:-1]]
            last = partial(training_step, model, optimizer, self.data, batches[-1], offset, micro)
            if self.peaks is None:
                losses.append(last())
            else:
                release_gradients(optimizer)
                resident = lambda: [*model.resident_tensors(), *optimizer_tensors(optimizer)]  # noqa: E731
                losses.append(self.peaks.run("train", what, rows, model.device, last, resident))
        trained = model.state(model.keys_for(assignment.modules, assignment.parts))
        model.set_trainable([])
        model.peft.eval()  # the shared model leaves training as it came: dropout off for whoever uses it next
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

        The mean squared gradient per parameter over ``config.batches`` batches (dropout off; the
        other modules folded, :meth:`LoraModel.fold_frozen`) of the plain loss, or with
        ``config.logit_adjustment`` of the logit-adjusted one the client trains on (:func:`label_offset`).
        Backpropagating into ``modules`` costs at most what training them does, so the server
        asks only for modules the client can afford.
        """
        start = time.perf_counter()
        model = self.model
        self.receive(tensors, payload=config.payload)
        model.set_trainable(modules)
        model.peft.eval()
        generator = torch.Generator().manual_seed(config.seed)
        squared = {m: 0.0 for m in modules}
        offset = label_offset(self.data.labels, model.num_labels, config.logit_adjustment)

        def backward(idx: Tensor) -> None:
            accumulate_gradients(model, self.data, idx, offset, config.micro_batch)

        what = frozenset(modules)
        batches = list(batch_indices(self.num_samples, config.batch_size, config.batches, generator))
        with model.fold_frozen(modules):
            for i, idx in enumerate(batches):
                for param in model.params.values():
                    param.grad = None
                if self.peaks is not None and i == len(batches) - 1:
                    self.peaks.run("score", what, len(idx), model.device, partial(backward, idx), model.resident_tensors)
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

    def evaluate(self, tensors: TensorDict, config: EvaluateInstructions) -> tuple[EvalCounts, dict[str, float | int]]:
        """Evaluate the received global adapter on this client's held-out rows: the counts the server pools
        (:class:`EvalCounts`, its rows included) and the pass's figures (batch rows, seconds, ``peak_bytes``).

        The adapter must be whole (every module takes part in the evaluated function, whatever
        ``federation.payload``); the pass is the server's (:func:`count_split`: every module merged, eval mode).
        With ``peaks`` set the pass is measured at the allocator, from the model's resident tensors, unless a
        pass of the same batch rows already was; the merged weights count. A client without held-out rows refuses.
        """
        if self.test_data is None or not len(self.test_data):
            raise ValueError(f"client {self.cid} holds no rows to evaluate on; set data.client_test_fraction")
        start = time.perf_counter()
        model = self.model
        self.receive(tensors, payload="full")
        model.set_trainable([])
        rows = min(config.batch_size, len(self.test_data))
        step = partial(count_split, model, self.test_data, config.batch_size)
        if self.peaks is None:
            counts = step()
        else:
            counts = self.peaks.run("evaluate", EVALUATION_STEP, rows, model.device, step, model.resident_tensors)
        metrics: dict[str, float | int] = {
            "batch_rows": rows,
            "seconds": time.perf_counter() - start,
        }
        if self.peaks is not None:
            metrics["peak_bytes"] = self.peaks.get("evaluate", EVALUATION_STEP, rows)
        return counts, metrics
