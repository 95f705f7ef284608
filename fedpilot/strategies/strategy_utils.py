"""Pure numeric helpers for aggregation over named numpy tensors.

Nothing here broadcasts: tensors averaged together must have one shape, that of the global tensor
they replace, or a ValueError names the key and the shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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


class TemporalCompensation:
    """Spatial-temporal aggregation (stagg) of LoRA modules trained by different clients.

    Per tensor key x of module m, in a round with participating clients P and the subset K_x that
    sent x:

        spatial    D_x = sum_{k in K_x} n_k (theta_k,x - theta_x) / sum_{k in K_x} n_k      (0 if K_x is empty)
        coverage   c_x = sum_{k in K_x} n_k / sum_{k in P} n_k
        staleness  s_m = 0 if any client trained a tensor of m, else s_m + 1
        history    h_x = beta * h_x + (1 - beta) * D_x   if K_x is non-empty, else beta * h_x
        weight     w_x = eta * (1 - c_x) * min(1, (s_m + 1) / tau)
        update     theta_x <- theta_x + D_x + w_x * h_x

    A module every client trained moves exactly as in FedAvg (c = 1). One that few or no clients
    trained keeps moving along its update history, more as it grows stale, less as coverage grows;
    the history decays while it is untouched, so the drift stays bounded. A tensor never trained
    has no history and never moves. The head, which every client trains, is the plain
    sample-weighted mean.
    """

    def __init__(self, module_keys: Mapping[str, Sequence[str]], modules: Sequence[str], eta: float, beta: float, tau: int) -> None:
        self.module_keys = module_keys
        self.modules = list(modules)
        self.eta, self.beta, self.tau = eta, beta, tau
        self.history: TensorDict = {}
        self.staleness: dict[str, int] = {m: 0 for m in self.modules}

    def aggregate(self, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        result = sample_weighted_average(global_tensors, updates)  # head, and any key outside a module
        participants = sum(u.num_samples for u in updates)
        for m in self.modules:
            keys = self.module_keys[m]
            touched = any(key in u.tensors for u in updates for key in keys)
            self.staleness[m] = 0 if touched else self.staleness[m] + 1
            for key in keys:
                current = global_tensors[key]
                trained = [u for u in updates if key in u.tensors]
                coverage = sum(u.num_samples for u in trained) / participants if participants else 0.0
                weight = self.eta * (1 - coverage) * min(1.0, (self.staleness[m] + 1) / self.tau)
                history = self.history.get(key, np.zeros_like(current))
                if trained:
                    mean_delta = weighted_mean([u.tensors[key] - current for u in trained], [u.num_samples for u in trained], key)
                    history = self.beta * history + (1 - self.beta) * mean_delta
                else:
                    mean_delta = np.zeros_like(current)
                    history = self.beta * history
                self.history[key] = history
                result[key] = current + mean_delta + weight * history
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: v.copy() for k, v in self.history.items()}, "staleness": dict(self.staleness)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {str(k): np.asarray(v).copy() for k, v in state["history"].items()}
        self.staleness = {str(k): int(v) for k, v in state["staleness"].items()}
