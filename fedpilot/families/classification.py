"""The torch side shared by families whose task is choosing one of a fixed set of labels: the
prediction is the highest-scoring label, the metrics are accuracy and macro-F1, and the depth is
the transformers config's ``num_hidden_layers``."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from fedpilot.families.base import FamilyRuntime


class LabelClassification(FamilyRuntime):
    """A :class:`FamilyRuntime` whose ``forward`` returns one score per label (logits or log-probabilities)."""

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        return output.argmax(dim=-1)

    def metrics(self, predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {
            "accuracy": float((predicted == labels).mean()),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        }

    def num_layers(self, model: nn.Module) -> int:
        return int(model.config.num_hidden_layers)
