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


def label_offset(labels: Tensor, num_labels: int, tau: float) -> Tensor | None:
    """``tau log pi``: the logit adjustment for a client whose labels are ``labels`` (None when tau is 0).

    pi is the client's label prior, add-one smoothed so a class it never saw gets a finite offset:
    ``pi_c = (n_c + 1) / (n + C)``.
    """
    if tau == 0:
        return None
    counts = torch.bincount(labels.long().cpu(), minlength=num_labels).double()
    if len(counts) != num_labels:
        raise ValueError(f"labels go up to {len(counts) - 1}, the model has {num_labels} labels")
    return (tau * torch.log((counts + 1) / (counts.sum() + num_labels))).float()


def batch_loss(model: LoraModel, data: TensorSplit, rows: Tensor | slice, reduction: str = "mean", offset: Tensor | None = None) -> Tensor:
    """The family's loss of the model on ``rows`` of ``data``, computed on the model's device.

    ``offset`` (:func:`label_offset`): the family's loss with each label's logit moved by it,
    ``-log softmax(f(x) + tau log pi)_y`` for a classifier head (``FamilyRuntime.loss``)."""
    features, labels = data.batch(rows, model.device)
    return model.runtime.loss(model.forward(features), labels, reduction, offset)


def accumulate_gradients(
    model: LoraModel, data: TensorSplit, rows: Tensor, offset: Tensor | None = None, micro_batch: int = 0,
) -> float:
    """Backward of the family's mean loss on ``rows`` of ``data`` into the trainable parameters' gradients (added to
    what they hold); returns the loss. ``micro_batch`` > 0: the rows run as consecutive micro-batches of that many
    rows, each backward on its share of the batch's loss (the family's summed loss over the batch's normaliser,
    :meth:`FamilyRuntime.normaliser`: rows, or response tokens), so the accumulated gradient is the whole batch's."""
    if micro_batch <= 0 or micro_batch >= len(rows):
        loss = batch_loss(model, data, rows, offset=offset)
        loss.backward()
        return loss.item()
    total = model.runtime.normaliser(data, rows)  # the batch's, read from its own rows (no copy of its features)
    loss_sum = 0.0
    for start in range(0, len(rows), micro_batch):
        part = batch_loss(model, data, rows[start:start + micro_batch], reduction="sum", offset=offset) / total
        part.backward()
        loss_sum += part.item()
    return loss_sum


def training_step(
    model: LoraModel, optimizer: torch.optim.Optimizer, data: TensorSplit, rows: Tensor, offset: Tensor | None = None,
    micro_batch: int = 0,
) -> float:
    """One forward, backward and optimiser step on ``rows`` of ``data`` (``offset``: :func:`batch_loss`), the rows in
    micro-batches of ``micro_batch`` rows when > 0 (:func:`accumulate_gradients`); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = accumulate_gradients(model, data, rows, offset, micro_batch)
    optimizer.step()
    return loss
