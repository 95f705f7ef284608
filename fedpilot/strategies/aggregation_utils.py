"""Pure numeric helpers for aggregation over named numpy tensors: weighted means, the per-tensor
sample-weighted average, and each module's coverage of a round.

Nothing here broadcasts: tensors averaged together must have one shape, that of the global tensor
they replace, or a ValueError names the key and the shapes. The one exception is explicit:
:func:`component_mean_delta` takes LoRA tensors of lower ranks and averages each rank component over
the clients that trained it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedpilot.core.keys import BASE_DELTA, LORA_A, LORA_B, rank_axis, tensor_key
from fedpilot.core.tensors import TensorDict
from fedpilot.strategies.base import ClientUpdate


def weighted_mean(tensors: Sequence[np.ndarray], weights: Sequence[float], key: str = "tensor") -> np.ndarray:
    """``sum_k w_k x_k / sum_k w_k``, computed in float64 and returned in the tensors' dtype.

    Every tensor must have the same shape and dtype (no broadcasting).
    """
    if not tensors:
        raise ValueError(f"{key}: nothing to average")
    shape, dtype = tensors[0].shape, tensors[0].dtype
    for tensor in tensors[1:]:
        if tensor.shape != shape or tensor.dtype != dtype:
            raise ValueError(
                f"{key}: cannot average tensors of shapes/dtypes {[(t.shape, str(t.dtype)) for t in tensors]}; "
                f"pad or truncate them to one shape first"
            )
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"{key}: weights must sum to a positive number")
    acc = np.zeros(shape, dtype=np.float64)
    for tensor, weight in zip(tensors, weights):
        acc += tensor.astype(np.float64) * (weight / total)
    return acc.astype(dtype)


def check_same_shape(key: str, current: np.ndarray, sent: np.ndarray, cid: int) -> None:
    if sent.shape != current.shape:
        raise ValueError(f"{key}: client {cid} sent shape {sent.shape}, the global tensor has {current.shape}")


def sample_weighted_average(global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
    """Per tensor, the sample-weighted mean over the clients that sent it; untouched tensors stay as they were."""
    result: TensorDict = {}
    for key, current in global_tensors.items():
        senders = [u for u in updates if key in u.tensors]
        for u in senders:
            check_same_shape(key, current, u.tensors[key], u.cid)
        if senders:
            result[key] = weighted_mean([u.tensors[key] for u in senders], [u.num_samples for u in senders], key)
        else:
            result[key] = current.copy()
    return result


def coverage(updates: Sequence[ClientUpdate], module_keys: Mapping[str, Sequence[str]], modules: Sequence[str]) -> dict[str, float]:
    """c_m: the share of the round's training samples whose clients sent module m (0 when nobody trained)."""
    total = sum(u.num_samples for u in updates)
    return {
        m: sum(u.num_samples for u in updates if any(k in u.tensors for k in module_keys[m])) / total if total else 0.0
        for m in modules
    }


def merge_keys(module: str) -> tuple[str, str, str]:
    """``module``'s lora_A, lora_B and base-delta keys: what the state of a strategy that merges into the
    frozen weights (``base_deltas``) holds per module."""
    a_key, b_key, d_key = (tensor_key(module, part) for part in (LORA_A, LORA_B, BASE_DELTA))
    return a_key, b_key, d_key


def pair_senders(updates: Sequence[ClientUpdate], a_key: str, b_key: str) -> list[ClientUpdate]:
    """The updates that sent both LoRA factors of a module."""
    return [u for u in updates if a_key in u.tensors and b_key in u.tensors]


def component_mean_delta(key: str, current: np.ndarray, senders: Sequence[ClientUpdate]) -> tuple[np.ndarray, float | np.ndarray]:
    """The sample-weighted mean change of tensor ``key`` over ``senders``, and the samples behind it.

    Every sender at the global shape: ``weighted_mean`` of ``sent - current`` and the senders' sample
    count (a float). Senders of LoRA tensors at lower ranks (their first r rank components, as
    :func:`~fedpilot.strategies.rank_utils.truncate` cut them): each rank component j is a module of
    its own, averaged over the senders that trained it (r_k > j),

        delta[j] = sum_{k: r_k > j} n_k (theta_k[j] - theta[j]) / sum_{k: r_k > j} n_k      (0 where nobody did)

    with the samples per component returned as an array that broadcasts along the rank axis. A
    low-rank sender neither pulls the components it did not train towards zero (HetLoRA's zero
    padding) nor dilutes their step: they are left to the senders that trained them, as a module
    is left to the clients that trained it. A shape other than a lower rank is a ValueError.
    """
    if all(u.tensors[key].shape == current.shape for u in senders):
        return weighted_mean([u.tensors[key] - current for u in senders], [u.num_samples for u in senders], key), float(
            sum(u.num_samples for u in senders))
    axis = rank_axis(key)
    if axis is None:
        raise ValueError(f"{key}: senders sent shapes {[u.tensors[key].shape for u in senders]}, the global tensor has {current.shape}")
    full = current.shape[axis]
    total = np.zeros(full, dtype=np.float64)
    acc = np.zeros(current.shape, dtype=np.float64)
    for u in senders:
        sent = u.tensors[key]
        rank = sent.shape[axis]
        expected = list(current.shape)
        expected[axis] = rank
        if tuple(sent.shape) != tuple(expected) or sent.dtype != current.dtype:
            raise ValueError(f"{key}: client {u.cid} sent {sent.shape} {sent.dtype}; the global tensor is {current.shape} {current.dtype}, "
                             f"only its rank axis may be lower")
        part = (slice(None),) * axis + (slice(0, rank),)
        acc[part] += u.num_samples * (sent.astype(np.float64) - current[part].astype(np.float64))
        total[:rank] += u.num_samples
    shape = [1] * current.ndim
    shape[axis] = full
    samples = total.reshape(shape)
    mean = np.divide(acc, samples, out=np.zeros_like(acc), where=samples > 0)
    return mean.astype(current.dtype), samples
