"""Pure numeric helpers for aggregation over named tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedpilot.models import TensorDict
from fedpilot.strategies.base import ClientUpdate


def weighted_mean(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum_k w_k x_k / sum_k w_k``, computed in float64 and returned in the tensors' dtype."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    acc = torch.zeros_like(tensors[0], dtype=torch.float64)
    for tensor, weight in zip(tensors, weights):
        acc += tensor.to(torch.float64) * (weight / total)
    return acc.to(tensors[0].dtype)


def sample_weighted_average(global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
    """Per tensor, the sample-weighted mean over the clients that sent it; untouched tensors stay as they were."""
    result: TensorDict = {}
    for key, current in global_tensors.items():
        senders = [u for u in updates if key in u.tensors]
        if senders:
            result[key] = weighted_mean([u.tensors[key] for u in senders], [u.num_samples for u in senders])
        else:
            result[key] = current.clone()
    return result


class TemporalCompensation:
    """Spatial-temporal aggregation (stagg) of LoRA modules trained by different clients.

    Per module m in a round with participating clients P and the subset K_m that trained m:

        spatial    D_m = sum_{k in K_m} n_k (theta_k,m - theta_m) / sum_{k in K_m} n_k      (0 if K_m is empty)
        coverage   c_m = sum_{k in K_m} n_k / sum_{k in P} n_k
        staleness  s_m = 0 if K_m is non-empty, else s_m + 1
        history    h_m = beta * h_m + (1 - beta) * D_m   if K_m is non-empty, else beta * h_m
        weight     w_m = eta * (1 - c_m) * min(1, (s_m + 1) / tau)
        update     theta_m <- theta_m + D_m + w_m * h_m

    A module every client trained moves exactly as in FedAvg (c_m = 1). One that few or no clients
    trained keeps moving along its update history, more as it grows stale, less as coverage grows;
    the history decays while it is untouched, so the drift stays bounded. The head, which every
    client trains, is the plain sample-weighted mean.
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
            trained = [u for u in updates if keys[0] in u.tensors]
            coverage = sum(u.num_samples for u in trained) / participants if participants else 0.0
            self.staleness[m] = 0 if trained else self.staleness[m] + 1
            weight = self.eta * (1 - coverage) * min(1.0, (self.staleness[m] + 1) / self.tau)
            for key in keys:
                current = global_tensors[key]
                history = self.history.get(key, torch.zeros_like(current))
                if trained:
                    mean_delta = weighted_mean([u.tensors[key] - current for u in trained], [u.num_samples for u in trained])
                    history = self.beta * history + (1 - self.beta) * mean_delta
                else:
                    mean_delta = torch.zeros_like(current)
                    history = self.beta * history
                self.history[key] = history
                result[key] = current + mean_delta + weight * history
        return result
