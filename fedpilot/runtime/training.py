"""Local training steps on a :class:`~fedpilot.runtime.lora.LoraModel`: optimisers, batches, loss."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from fedpilot.data.split import TensorSplit
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions


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


def batch_loss(model: LoraModel, data: TensorSplit, rows: Tensor | slice, reduction: str = "mean") -> Tensor:
    """The family's loss of the model on ``rows`` of ``data``, computed on the model's device."""
    features, labels = data.batch(rows, model.device)
    return model.runtime.loss(model.forward(features), labels, reduction)


def training_step(model: LoraModel, optimizer: torch.optim.Optimizer, data: TensorSplit, rows: Tensor) -> float:
    """One forward, backward and optimiser step on ``rows`` of ``data``; returns the loss."""
    loss = batch_loss(model, data, rows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()
