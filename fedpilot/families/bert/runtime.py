"""The torch side of the BERT classification family (transformers' AutoModelForSequenceClassification)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from fedpilot.families.base import ModelSpec
from fedpilot.families.classification import LabelClassification


class BertClassification(LabelClassification):
    def load_model(self, spec: ModelSpec, num_labels: int, base_dropout: float | None) -> nn.Module:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "head newly initialised" report is expected
        hf_logging.disable_progress_bar()
        try:
            fields = spec.family.dropout_fields
            overrides = {} if base_dropout is None else {field: base_dropout for field in fields}
            return AutoModelForSequenceClassification.from_pretrained(spec.path(), num_labels=num_labels, **overrides)
        finally:
            hf_logging.set_verbosity(verbosity)

    def load_tokenizer(self, spec: ModelSpec) -> Any:
        return AutoTokenizer.from_pretrained(spec.path())

    def encode(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
        return {"input_ids": encoded["input_ids"].long(), "attention_mask": encoded["attention_mask"].long()}

    def forward(self, model: nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).logits

    def loss(self, output: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", offset: torch.Tensor | None = None) -> torch.Tensor:
        if offset is not None:
            output = output.float() + offset.to(output.device)
        return F.cross_entropy(output, labels, reduction=reduction)


RUNTIME = BertClassification()
