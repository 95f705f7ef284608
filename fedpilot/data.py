"""From a registered corpus to tokenised, stratified train/test tensors (tokenised once, cached on disk)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedpilot.config import DataSettings
from fedpilot.datasets import DATASETS


def cache_dir() -> Path:
    """``$FEDPILOT_CACHE``, else ``~/.cache/fedpilot``."""
    return Path(os.environ.get("FEDPILOT_CACHE", Path.home() / ".cache" / "fedpilot"))


@dataclass(frozen=True)
class TokenizedSplit:
    input_ids: Tensor  # (N, max_length) int64
    attention_mask: Tensor  # (N, max_length) int64
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray | Tensor) -> TokenizedSplit:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TokenizedSplit(self.input_ids[idx], self.attention_mask[idx], self.labels[idx])


@dataclass(frozen=True)
class SplitData:
    train: TokenizedSplit
    test: TokenizedSplit
    label_names: list[str]


def _tokenize_corpus(dataset: str, model_name: str, max_length: int) -> tuple[TokenizedSplit, list[str]]:
    from fedpilot.models import load_tokenizer

    corpus = DATASETS.get_or_fail(dataset)()
    digest = hashlib.sha256("\x00".join(corpus.texts).encode()).hexdigest()[:16]
    path = cache_dir() / f"tokens-{dataset}-{model_name}-{max_length}-{digest}.pt"
    if path.is_file():
        cached = torch.load(path)
        return TokenizedSplit(**cached), corpus.label_names
    encoded = load_tokenizer(model_name)(
        corpus.texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"
    )
    split = TokenizedSplit(
        encoded["input_ids"].long(), encoded["attention_mask"].long(), torch.tensor(corpus.labels, dtype=torch.long)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(vars(split), partial)
    partial.replace(path)
    return split, corpus.label_names


def load_split(settings: DataSettings, model_name: str, seed: int) -> SplitData:
    """Tokenised train and test splits, stratified by label, reproducible from ``seed``."""
    from sklearn.model_selection import train_test_split

    tokens, label_names = _tokenize_corpus(settings.dataset, model_name, settings.max_length)
    labels = tokens.labels.numpy()
    indices = np.arange(len(labels))
    if settings.max_samples is not None and settings.max_samples < len(indices):
        indices, _ = train_test_split(
            indices, train_size=settings.max_samples, stratify=labels, random_state=seed
        )
    train_idx, test_idx = train_test_split(
        indices, test_size=settings.test_fraction, stratify=labels[indices], random_state=seed
    )
    return SplitData(tokens.subset(np.sort(train_idx)), tokens.subset(np.sort(test_idx)), label_names)
