"""Measure what one local training step really costs, at the allocator.

On CUDA the peak is ``torch.cuda.max_memory_allocated``. On CPU it is the running sum of the
allocation and free events that ``torch.profiler`` records with ``profile_memory=True``, starting
from the bytes already alive when the step began (weights, adapter, optimiser state). The
profiler's memory timeline is a private API of torch 2.13 (pinned in pyproject.toml); a profiled
step is several times slower than a plain one, so callers measure once per distinct step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

Timeline = Iterable[tuple[int, object, object, int]]


def peak_of_timeline(timeline: Timeline) -> tuple[int, int]:
    """``(bytes alive before, peak bytes alive)`` from the profiler's ``(time, action, key, size)`` events."""
    events = list(timeline)
    alive = sum(size for _, action, _, size in events if _action_name(action) == "PREEXISTING")
    before = peak = alive
    for _, action, _, size in events:
        name = _action_name(action)
        if name == "CREATE":
            alive += size
            peak = max(peak, alive)
        elif name == "DESTROY":
            alive -= size
    return before, peak


def _action_name(action: object) -> str:
    return getattr(action, "name", str(action))


class PeakMeter:
    """Context manager: after the block, ``peak_bytes`` is the most tensor memory alive inside it.

    The CPU profiler can miss the free of a tensor allocated before it started (torch warns
    "Memory block of unknown size"), so release such tensors, e.g. the last step's gradients
    (:func:`release_gradients`), before entering.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.before_bytes = 0

    def __enter__(self) -> PeakMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_bytes = torch.cuda.memory_allocated(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self._profiler = profile(
                activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
            )
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._profiler.__exit__(*exc)
        if exc[0] is None:
            self.before_bytes, self.peak_bytes = peak_of_timeline(self._profiler._memory_profile().timeline)


def release_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Free the previous step's gradients now, as the step itself would first thing (see :class:`PeakMeter`)."""
    optimizer.zero_grad(set_to_none=True)


@contextmanager
def count_saved_tensors(exclude: Iterable[nn.Parameter] = ()) -> Iterator[dict[int, int]]:
    """Bytes of the tensors autograd saves for backward inside the block, each storage counted once.

    Yields a ``{storage pointer: bytes}`` dict filled as the block runs; storages of ``exclude``
    (the parameters, accounted as weights) are left out.
    """
    skipped = {p.untyped_storage().data_ptr() for p in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skipped:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield storages


@dataclass(frozen=True)
class StepMemory:
    """The peak of one training step and the parts it is made of, in bytes."""

    peak: int
    frozen_weights: int
    trainable_params: int
    gradients: int
    optimizer_state: int
    saved_activations: int

    @property
    def transient(self) -> int:
        """What the named parts do not explain: buffers of the forward and backward pass."""
        return self.peak - self.frozen_weights - self.trainable_params - self.gradients - self.optimizer_state - self.saved_activations

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "transient": self.transient}


def measure_step(
    module: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], object], device: torch.device | str = "cpu"
) -> StepMemory:
    """Run ``step`` (forward, backward, optimiser step) twice: once under the meter, once counting saved tensors.

    Two passes because saved-tensor hooks change what autograd keeps alive, hence the peak. Call
    it after at least one unmeasured step, so the optimiser state exists as in every later step.
    """
    params = list(module.parameters())
    release_gradients(optimizer)
    with PeakMeter(device) as meter:
        step()
    with count_saved_tensors(exclude=params) as saved:
        step()
    return StepMemory(
        peak=meter.peak_bytes,
        frozen_weights=sum(p.nbytes for p in params if not p.requires_grad),
        trainable_params=sum(p.nbytes for p in params if p.requires_grad),
        gradients=sum(p.grad.nbytes for p in params if p.grad is not None),
        optimizer_state=sum(
            value.nbytes for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)
        ),
        saved_activations=sum(saved.values()),
    )
