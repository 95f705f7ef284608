"""A corpus (registered, or the user's own files) encoded for a model (the family's tokenizer and task
format), cached on disk, and split: what every driver trains and evaluates on."""

from __future__ import annotations

import hashlib
import os

import torch

from fedpilot.core.errors import ConfigError
from fedpilot.core.paths import cache_dir
from fedpilot.data.datasets import DATASETS, Corpus
from fedpilot.data.settings import DataSettings
from fedpilot.data.split import SplitData, TensorSplit, split_encoded
from fedpilot.families import MODELS
from fedpilot.families.base import ModelSpec

ENCODING_VERSION = 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                   "special_tokens_map.json", "spiece.model", "sentencepiece.bpe.model")


def load_corpus(dataset: str, data: DataSettings | None = None) -> Corpus:
    """The registered corpus ``dataset``, or the user's files of ``data`` (needed for them: the columns)."""
    if dataset in DATASETS:
        return DATASETS[dataset]()
    from fedpilot.data.files import cached_file_corpus

    if data is None or data.dataset != dataset:
        raise ValueError(f"dataset {dataset!r} is a file: pass its DataSettings")
    return cached_file_corpus(data)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_key(spec: ModelSpec) -> str:
    """The part of the token cache's key that names the model: a bundled model's name; for a folder, the
    digest of its path and its tokenizer files (a changed tokenizer re-encodes)."""
    if spec.model_type is None:
        return spec.name
    folder = spec.path()
    files = b"".join((folder / f).read_bytes() for f in TOKENIZER_FILES if (folder / f).is_file())
    return f"{spec.model_type}-{_short(str(folder))}-{hashlib.sha256(files).hexdigest()[:12]}"


def encode_corpus(
    dataset: str, model_name: str, max_length: int, data: DataSettings | None = None, task: str = "classification"
) -> tuple[TensorSplit, list[str]]:
    """Every example of ``dataset`` encoded for ``model_name`` and ``task`` (cached by corpus digest), and the
    label names (for instruction data: its groups)."""
    spec = MODELS[model_name]
    corpus = load_corpus(dataset, data)
    if corpus.task != task:
        raise ConfigError(f"data.dataset {dataset} is {corpus.task} data; set task: {corpus.task} or give {task} data")
    digest = hashlib.sha256("\x00".join(corpus.texts).encode()).hexdigest()[:16]
    name = dataset
    if dataset not in DATASETS:  # own files: the labels and the class list are part of what is cached
        name = f"file-{_short(dataset)}"
        digest = hashlib.sha256(f"{digest}\x00{corpus.labels}\x00{corpus.label_names}".encode()).hexdigest()[:16]
    response_length = data.max_response_length if data is not None else DataSettings.model_fields["max_response_length"].default
    if corpus.responses is not None:  # instruction data: the responses and their token budget too
        digest = hashlib.sha256(f"{digest}\x00{chr(0).join(corpus.responses)}\x00{response_length}".encode()).hexdigest()[:16]
        name = f"{name}-instruction"
    path = cache_dir() / f"tokens-v{ENCODING_VERSION}-{name}-{model_key(spec)}-{max_length}-{digest}.pt"
    if path.is_file():
        cached = torch.load(path)
        return TensorSplit(cached["features"], cached["labels"]), corpus.label_names
    runtime = spec.family.load_runtime(task)
    try:
        features = runtime.encode_corpus(runtime.load_tokenizer(spec), corpus, max_length, response_length)
    except ValueError as err:  # the task cannot be posed to this model (label answers, prompt length): a data setting
        raise ConfigError(f"data ({dataset} for {spec.name}): {err}; change data.max_length or the labels") from None
    split = TensorSplit(features, torch.tensor(corpus.labels, dtype=torch.long))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"features": dict(split.features), "labels": split.labels}, partial)
    partial.replace(path)
    return split, corpus.label_names


def load_split(
    settings: DataSettings, model_name: str, seed: int, proxy_fraction: float | None = None, task: str = "classification"
) -> SplitData:
    """``settings.dataset`` encoded for ``model_name`` and split (:func:`fedpilot.data.split.split_encoded`:
    train and test stratified by label, or the test split given with the data, reproducible from ``seed``,
    with the validation split and the server's proxy set of ``proxy_fraction`` held out of the train split
    where asked), encoded for ``task`` (the config's ``task``)."""
    tokens, label_names = encode_corpus(settings.dataset, model_name, settings.max_length, settings, task)
    test_start = None if settings.dataset in DATASETS else getattr(load_corpus(settings.dataset, settings), "test_start", None)
    return split_encoded(tokens, label_names, settings, seed, proxy_fraction, test_start)
