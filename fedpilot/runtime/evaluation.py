"""Central evaluation of global adapter tensors with the family's loss and metrics, on the model's device."""

from __future__ import annotations

import numpy as np
import torch

from fedpilot.core.tensors import TensorDict
from fedpilot.data.split import TensorSplit
from fedpilot.runtime.client_evaluation import EvalCounts
from fedpilot.runtime.lora import LoraModel


@torch.no_grad()
def evaluate(model: LoraModel, tensors: TensorDict, split: TensorSplit, batch_size: int) -> dict[str, float]:
    """Mean loss and the family's metrics (e.g. accuracy, macro-F1; for instruction tuning ROUGE-L and
    perplexity, :meth:`FamilyRuntime.evaluate`) of ``tensors`` on ``split``.

    Every LoRA module is merged into a copy of its weight for the pass (:meth:`LoraModel.fold_frozen`
    with ``merge``): nothing trains and dropout is off in eval mode, so the function is the same, at
    the cost of the base model (the server's memory is not budgeted).
    """
    model.set_ranks({})
    model.load_state(tensors)
    model.peft.eval()
    with model.fold_frozen([], merge=True):
        return model.runtime.evaluate(model, split, batch_size)


@torch.no_grad()
def count_split(model: LoraModel, split: TensorSplit, batch_size: int) -> EvalCounts:
    """The :class:`EvalCounts` of the model's loaded adapter on ``split``: the pass :func:`evaluate` makes
    (every LoRA module merged into a copy of its weight, eval mode, batches of ``batch_size`` rows), counted
    instead of averaged, so that evaluations of several splits pool exactly (a client's evaluation).
    Classification only: a family whose predictions are not labels is refused."""
    if model.task != "classification":
        raise ValueError(f"a client evaluates classifiers only; this model's task is {model.task}")
    model.peft.eval()
    with model.fold_frozen([], merge=True):
        loss_sum, predicted = model.runtime.predict_split(model, split, batch_size)
    return EvalCounts.from_predictions(predicted, split.labels.numpy(), loss_sum, model.num_labels)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` rows (all rows if fewer), each label's share as in ``labels``.

    Each class gets its proportional share rounded down, the rows left over go to the largest
    remainders (ties: the smaller label); rows within a class are drawn by ``seed``.
    """
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: size - quota.sum()]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


class Evaluator:
    """``evaluator(tensors) -> metrics`` on a fixed split: what the server calls after a round.

    ``subset`` (``train.eval_subset``): ``evaluator(tensors, subset=True)`` evaluates a fixed
    stratified subset of that many rows drawn once with ``seed``; without ``subset=True``, or
    without a subset size, the whole split. Every result says how many rows it saw (``eval_samples``).
    """

    def __init__(self, model: LoraModel, split: TensorSplit, batch_size: int, subset: int | None = None, seed: int = 0) -> None:
        self.model, self.split, self.batch_size = model, split, batch_size
        self.subset_split = None
        if subset is not None and subset < len(split):
            self.subset_split = split.subset(stratified_subset(split.labels.numpy(), subset, seed))

    def __call__(self, tensors: TensorDict, subset: bool = False) -> dict[str, float]:
        split = self.subset_split if subset and self.subset_split is not None else self.split
        return {**evaluate(self.model, tensors, split, self.batch_size), "eval_samples": len(split)}
