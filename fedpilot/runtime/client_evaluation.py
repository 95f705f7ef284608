"""Federated evaluation's arithmetic, torch-free: what a client reports of its held-out rows, and how the
server pools the reports into the metrics of their union.

A client reports **counts**, not means (:class:`EvalCounts`): its rows, its summed loss, and per label how
many rows carry it, how many it predicted and how many of those were right. Counts add up, so the pooled
figures are exactly those of one evaluation on the union of the clients' held-out rows:

- accuracy = sum of correct / sum of rows;
- macro-F1 = the mean over the labels present (true or predicted) in the union of ``2 TP / (true + predicted)``
  (scikit-learn's ``f1_score(average="macro", zero_division=0)``, which averages over exactly those labels);
- loss = sum of summed losses / sum of rows (the row-weighted mean of the clients' mean losses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

EVALUATE_MODES = ("server", "clients", "both")  # train.evaluate
CLIENTS_PREFIX = "clients_"  # train.evaluate: both: the pooled metrics under these keys, beside the server's


@dataclass(frozen=True)
class EvalCounts:
    """What one evaluation of a classifier saw: sufficient statistics for accuracy, macro-F1 and the mean loss."""

    rows: int
    loss_sum: float  # the summed per-row loss (the family's loss with reduction "sum", summed over batches)
    true_counts: tuple[int, ...]  # per label: rows whose label it is
    predicted_counts: tuple[int, ...]  # per label: rows predicted as it
    correct_counts: tuple[int, ...]  # per label: rows of that label predicted as it (true positives)

    @classmethod
    def from_predictions(cls, predicted: np.ndarray, labels: np.ndarray, loss_sum: float, num_labels: int) -> EvalCounts:
        """The counts of ``predicted`` against ``labels`` (integer labels in ``0..num_labels-1``)."""
        predicted, labels = np.asarray(predicted), np.asarray(labels)
        if predicted.shape != labels.shape or predicted.ndim != 1:
            raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} must be two vectors of one length")

        def count(values: np.ndarray) -> tuple[int, ...]:
            return tuple(int(c) for c in np.bincount(values.astype(np.int64), minlength=num_labels))

        return cls(len(labels), float(loss_sum), count(labels), count(predicted), count(labels[predicted == labels]))

    def problem(self, num_labels: int | None = None) -> str | None:
        """Why these counts cannot be what an evaluation saw (None: they can): a length other than
        ``num_labels``, a negative count, totals that differ from ``rows``, more right than true or predicted,
        a loss that is not a finite non-negative number."""
        lengths = {len(self.true_counts), len(self.predicted_counts), len(self.correct_counts)}
        if len(lengths) != 1 or (num_labels is not None and lengths != {num_labels}):
            return f"counts of {sorted(lengths)} labels, expected {num_labels}"
        counts = (*self.true_counts, *self.predicted_counts, *self.correct_counts)
        if any(not isinstance(c, int) or c < 0 for c in (self.rows, *counts)):
            return "a count is negative or not a whole number"
        if self.rows < 1:
            return "no rows evaluated"
        if sum(self.true_counts) != self.rows or sum(self.predicted_counts) != self.rows:
            return f"per-label counts sum to {sum(self.true_counts)} true and {sum(self.predicted_counts)} predicted, not the {self.rows} rows"
        if any(c > min(t, p) for c, t, p in zip(self.correct_counts, self.true_counts, self.predicted_counts)):
            return "more rows right than true or predicted for a label"
        if not (isinstance(self.loss_sum, float) and math.isfinite(self.loss_sum) and self.loss_sum >= 0):
            return f"summed loss {self.loss_sum!r} is not a finite non-negative number"
        return None

    def metrics(self) -> dict[str, float]:
        """``accuracy``, ``macro_f1`` and ``loss`` (the mean) of the rows these counts describe."""
        true, predicted, correct = (np.asarray(c, dtype=np.int64) for c in (self.true_counts, self.predicted_counts, self.correct_counts))
        present = (true + predicted) > 0
        f1 = 2.0 * correct[present] / (true[present] + predicted[present])
        return {
            "accuracy": float(correct.sum() / self.rows),
            "macro_f1": float(f1.mean()) if f1.size else 0.0,
            "loss": float(self.loss_sum / self.rows),
        }

    def to_dict(self) -> dict[str, object]:
        return {"rows": self.rows, "loss_sum": self.loss_sum, "true_counts": list(self.true_counts),
                "predicted_counts": list(self.predicted_counts), "correct_counts": list(self.correct_counts)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EvalCounts:
        return cls(int(data["rows"]), float(data["loss_sum"]), tuple(int(c) for c in data["true_counts"]),
                   tuple(int(c) for c in data["predicted_counts"]), tuple(int(c) for c in data["correct_counts"]))


def pooled(counts: Iterable[EvalCounts]) -> EvalCounts | None:
    """The counts of the union of the evaluations (element-wise sums; None when there are none). Evaluations
    of different label sets are refused, never broadcast."""
    counts = list(counts)
    if not counts:
        return None
    lengths = {len(c.true_counts) for c in counts}
    if len(lengths) != 1:
        raise ValueError(f"cannot pool counts of different label sets: {sorted(lengths)} labels")

    def add(parts: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        return tuple(int(sum(column)) for column in zip(*parts))

    return EvalCounts(
        rows=sum(c.rows for c in counts),
        loss_sum=math.fsum(c.loss_sum for c in counts),
        true_counts=add([c.true_counts for c in counts]),
        predicted_counts=add([c.predicted_counts for c in counts]),
        correct_counts=add([c.correct_counts for c in counts]),
    )


def pooled_metrics(counts: Iterable[EvalCounts]) -> dict[str, float]:
    """The metrics of the union of the evaluations, with ``eval_samples`` (its rows) and ``eval_clients``
    (how many evaluations were pooled); empty when there are none (the round is not evaluated)."""
    counts = list(counts)
    total = pooled(counts)
    if total is None:
        return {}
    return {**total.metrics(), "eval_samples": total.rows, "eval_clients": len(counts)}
