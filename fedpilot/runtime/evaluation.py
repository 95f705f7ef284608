"""Central evaluation of global adapter tensors with the family's loss and metrics, on the model's device."""

from __future__ import annotations

import torch

from fedpilot.core.tensors import TensorDict
from fedpilot.data.split import TensorSplit
from fedpilot.runtime.lora import LoraModel


@torch.no_grad()
def evaluate(model: LoraModel, tensors: TensorDict, split: TensorSplit, batch_size: int) -> dict[str, float]:
    """Mean loss and the family's metrics (e.g. accuracy, macro-F1) of ``tensors`` on ``split``."""
    model.set_ranks({})
    model.load_state(tensors)
    model.peft.eval()
    losses, predictions = [], []
    for start in range(0, len(split), batch_size):
        features, labels = split.batch(slice(start, start + batch_size), model.device)
        output = model.forward(features)
        losses.append(model.runtime.loss(output, labels, "sum").item())
        predictions.append(model.runtime.predict(output).cpu())
    predicted = torch.cat(predictions).numpy()
    metrics = model.runtime.metrics(predicted, split.labels.numpy())
    return {"loss": float(sum(losses) / len(split)), **metrics}


class Evaluator:
    """``evaluator(tensors) -> metrics`` on a fixed split: what the server calls after each round."""

    def __init__(self, model: LoraModel, split: TensorSplit, batch_size: int) -> None:
        self.model, self.split, self.batch_size = model, split, batch_size

    def __call__(self, tensors: TensorDict) -> dict[str, float]:
        return evaluate(self.model, tensors, self.split, self.batch_size)


