"""Measure what one local training step really costs, at the allocator.

On CUDA the peak is ``torch.cuda.max_memory_allocated``. On CPU it is the running sum of the
allocation and free events that ``torch.profiler`` records with ``profile_memory=True``, starting
from the bytes already alive when the step began (weights, adapter, optimiser state).

Two ways to know what was alive when the step began, on CPU:

- ``resident`` given (what the runtime uses): those tensors (each storage once), plus any block
  allocated before the step and freed inside it. The profiler then records allocation events only
  (no shapes, no stacks) and the peak is a prefix sum over them: a measured step costs about 1.1x
  a plain one instead of 2.5-3x with the full memory profile (``benchmarks/step_overhead.py``
  prints it). Tensors the step never touches (a frozen weight whose module is folded) still count.
- ``resident`` None: the tensors the step touches, from the profiler's memory timeline (a private
  API of torch 2.13, pinned in pyproject.toml; needs recorded shapes, not stacks: the timeline does
  not depend on them).
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


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage shared by views counts once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def peak_of_allocations(events: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """``(bytes freed that were allocated before, peak of the running sum)`` of ``(ptr, +/-bytes)`` events in time order.

    A free of a block not allocated among the events was alive when they began: it counts from the start.
    """
    events = list(events)
    live: set[int] = set()
    unknown_freed = 0
    for ptr, size in events:
        if size > 0:
            live.add(ptr)
        elif ptr in live:
            live.discard(ptr)
        else:
            unknown_freed -= size
    alive = peak = unknown_freed
    for _, size in events:
        alive += size
        peak = max(peak, alive)
    return unknown_freed, peak


def _allocation_events(profiler) -> list[tuple[int, int]]:
    from torch._C._profiler import _EventType

    stack = list(profiler.profiler.kineto_results.experimental_event_tree())
    found = []
    while stack:
        event = stack.pop()
        if event.typed[0] == _EventType.Allocation:
            fields = event.typed[1]
            found.append((event.start_time_ns, fields.ptr, fields.alloc_size))
        stack.extend(event.children)
    found.sort(key=lambda e: e[0])
    return [(ptr, size) for _, ptr, size in found]


class PeakMeter:
    """Context manager: after the block, ``peak_bytes`` is the most tensor memory alive inside it.

    ``resident``: the tensors alive across the block (weights, adapter, optimiser state, folded
    weights; e.g. :meth:`LoraModel.resident_tensors`). With it, the CPU meter reads allocation
    events only and counts them from ``before_bytes`` = their storages; without it, from what the
    profiler's memory timeline saw the block touch (slower). On CUDA the allocator knows both.

    The CPU profiler can miss the free of a tensor allocated before it started (torch warns
    "Memory block of unknown size"), so release such tensors, e.g. the last step's gradients
    (:func:`release_gradients`), before entering.
    """

    def __init__(self, device: torch.device | str = "cpu", resident: Iterable[torch.Tensor] | None = None) -> None:
        self.device = torch.device(device)
        self.resident = None if resident is None else list(resident)
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
                activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=self.resident is None
            )
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._profiler.__exit__(*exc)
        if exc[0] is not None:
            return
        if self.resident is not None:
            freed_before, peak = peak_of_allocations(_allocation_events(self._profiler))
            resident = storage_bytes(self.resident)
            self.before_bytes, self.peak_bytes = resident + freed_before, resident + peak
        else:
            from torch.profiler._memory_profiler import MemoryProfile

            timeline = MemoryProfile(self._profiler.profiler.kineto_results).timeline
            self.before_bytes, self.peak_bytes = peak_of_timeline(timeline)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimiser's state tensors (Adam moments, step counters): resident across steps."""
    return [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]


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
