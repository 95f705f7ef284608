"""What the server accepts from a client: exactly the tensors its assignment trains, in the shapes
and dtype of that assignment, all finite, and a change no larger than a bound relative to the
round's other updates. One place, used by every driver before aggregation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedpilot.core.keys import HEAD, module_of
from fedpilot.core.tensors import TensorDict, squared_norm
from fedpilot.strategies.base import Assignment, FederationContext


def update_problem(
    context: FederationContext, assignment: Assignment, tensors: TensorDict, global_tensors: TensorDict, num_samples: int
) -> str | None:
    """Why this update must be rejected, or None when it is acceptable."""
    if num_samples <= 0:
        return f"num_samples is {num_samples}; it must be positive"
    expected = context.reply_keys(assignment)
    extra = sorted(set(tensors) - set(expected))
    if extra:
        return f"sent {len(extra)} tensors it was not assigned, e.g. {extra[0]!r}"
    missing = [k for k in expected if k not in tensors]
    if missing:
        return f"lacks {len(missing)} assigned tensors, e.g. {missing[0]!r}"
    for key in expected:
        value = tensors[key]
        if not isinstance(value, np.ndarray):
            return f"{key}: not an array ({type(value).__name__})"
        module = module_of(key)
        rank = None if module == HEAD else assignment.ranks.get(module)
        shape = context.expected_shape(key, rank)
        if tuple(value.shape) != shape:
            return f"{key}: shape {tuple(value.shape)}, assigned {shape}"
        if value.dtype != global_tensors[key].dtype:
            return f"{key}: dtype {value.dtype}, expected {global_tensors[key].dtype}"
        if not np.isfinite(value).all():
            return f"{key}: holds NaN or Inf"
    return None


def update_rms(sent: TensorDict, received: Mapping[str, np.ndarray]) -> float:
    """Root-mean-square change of an update: ||sent - received|| / sqrt(elements), over the sent tensors.

    Per element, so clients that trained different numbers of modules compare.
    """
    squares = squared_norm(*(sent[k].astype(np.float64) - received[k].astype(np.float64) for k in sent))
    elements = sum(sent[k].size for k in sent)
    return float(np.sqrt(squares / elements)) if elements else 0.0


def outliers(norms: Sequence[float], bound: float | None) -> list[int]:
    """Positions of norms above ``bound`` x the median norm (none when bound is None or the median is 0)."""
    if bound is None or len(norms) < 2:
        return []
    median = float(np.median(norms))
    if median <= 0:
        return []
    return [i for i, n in enumerate(norms) if n > bound * median]
