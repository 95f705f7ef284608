"""A registered corpus encoded for a model (the family's tokenizer and task format), cached on disk,
and split: what every driver trains and evaluates on."""

from __future__ import annotations

import hashlib
import os

import torch

from fedpilot.core.paths import cache_dir
from fedpilot.data.datasets import DATASETS
from fedpilot.data.settings import DataSettings
from fedpilot.data.split import SplitData, TensorSplit, split_encoded
from fedpilot.families import MODELS

ENCODING_VERSION = 2


def encode_corpus(dataset: str, model_name: str, max_length: int) -> tuple[TensorSplit, list[str]]:
    """Every example of ``dataset`` encoded for ``model_name`` (cached by corpus digest), and the label names."""
    spec = MODELS[model_name]
    corpus = DATASETS.get_or_fail(dataset)()
    digest = hashlib.sha256("\x00".join(corpus.texts).encode()).hexdigest()[:16]
    path = cache_dir() / f"tokens-v{ENCODING_VERSION}-{dataset}-{model_name}-{max_length}-{digest}.pt"
    if path.is_file():
        cached = torch.load(path)
        return TensorSplit(cached["features"], cached["labels"]), corpus.label_names
    runtime = spec.family.load_runtime()
    features = runtime.encode_task(runtime.load_tokenizer(spec), corpus.texts, corpus.label_names, max_length)
    split = TensorSplit(features, torch.tensor(corpus.labels, dtype=torch.long))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"features": dict(split.features), "labels": split.labels}, partial)
    partial.replace(path)
    return split, corpus.label_names


def load_split(settings: DataSettings, model_name: str, seed: int, proxy_fraction: float | None = None) -> SplitData:
    """``settings.dataset`` encoded for ``model_name`` and split (:func:`fedpilot.data.split.split_encoded`:
    train and test stratified by label, reproducible from ``seed``, with the validation split and the
    server's proxy set of ``proxy_fraction`` held out of the train split where asked)."""
    tokens, label_names = encode_corpus(settings.dataset, model_name, settings.max_length)
    return split_encoded(tokens, label_names, settings, seed, proxy_fraction)
