"""Pure numeric helpers for aggregation over named tensors."""

from __future__ import annotations

from collections.abc import Sequence

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
