"""Encoded examples and their stratified train / test (/ validation / proxy) splits.

How texts become model inputs is the model family's business: :func:`fedpilot.families.encoding.load_split`
encodes a registered corpus for a model (cached on disk) and hands it to :func:`split_encoded` here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedpilot.data.indices import train_test_indices
from fedpilot.data.settings import DataSettings


@dataclass(frozen=True)
class TensorSplit:
    """Encoded examples: model inputs by name (one row per example) and integer labels."""

    features: Mapping[str, Tensor]
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def seq_len(self) -> int:
        return int(next(iter(self.features.values())).shape[1])

    def subset(self, indices: np.ndarray | Tensor | list[int]) -> TensorSplit:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TensorSplit({k: v[idx] for k, v in self.features.items()}, self.labels[idx])

    def batch(self, rows: Tensor | slice, device: torch.device) -> tuple[dict[str, Tensor], Tensor]:
        """The rows' inputs and labels, on ``device``."""
        return {k: v[rows].to(device) for k, v in self.features.items()}, self.labels[rows].to(device)


@dataclass(frozen=True)
class SplitData:
    """The train split (what clients partition), the test split, and the server's proxy set, if any
    (held out of the train split before partitioning, for strategies that score layers on the server)."""

    train: TensorSplit
    test: TensorSplit
    label_names: list[str]
    proxy: TensorSplit | None = None
    validation: TensorSplit | None = None  # data.validation_fraction: held out of the train split, for tuning


def split_encoded(
    tokens: TensorSplit, label_names: list[str], settings: DataSettings, seed: int, proxy_fraction: float | None = None,
    test_start: int | None = None,
) -> SplitData:
    """An encoded corpus's train and test splits, stratified by label, reproducible from ``seed``.

    ``proxy_fraction``: hold ``ceil(proxy_fraction * n_c)`` train examples of each class c out as the
    server's proxy set (:func:`hold_out_per_class`); the clients never see them. None: no proxy set,
    and the splits are exactly those without one.

    ``settings.validation_fraction``: first hold ``ceil(fraction * n_c)`` train examples of each class out
    as the validation split (a seed stream of its own, so it does not depend on the proxy set); the proxy
    set is then drawn from what remains. None: no validation split, and the splits are exactly those
    without one.

    ``test_start``: the rows from it on are a test split given with the data (``data.test_dataset``), used as
    it is (:func:`fedpilot.data.indices.train_test_indices`).
    """
    labels = tokens.labels.numpy()
    train_idx, test_idx = train_test_indices(labels, settings, seed, test_start)
    validation = None
    if settings.validation_fraction is not None:
        train_idx, validation_idx = hold_out_per_class(
            train_idx, labels[train_idx], settings.validation_fraction, seed, salt=VALIDATION_SALT
        )
        validation = tokens.subset(validation_idx)
    proxy = None
    if proxy_fraction is not None:
        train_idx, proxy_idx = hold_out_per_class(train_idx, labels[train_idx], proxy_fraction, seed)
        proxy = tokens.subset(proxy_idx)
    return SplitData(tokens.subset(train_idx), tokens.subset(np.sort(test_idx)), label_names, proxy, validation)


PROXY_SALT, VALIDATION_SALT = 0x9F0C5, 0x7A11D


def hold_out_per_class(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, salt: int = PROXY_SALT
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held out)``, both sorted: of each class c with n_c examples, ``ceil(fraction * n_c)``
    (at least 1, at most n_c - 1) drawn uniformly with a generator seeded by ``(seed, salt)``."""
    if not 0 < fraction < 1:
        raise ValueError(f"a held-out fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng([seed, salt])
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        members = indices[labels == label]
        count = min(max(1, math.ceil(fraction * len(members))), len(members) - 1)
        if count > 0:
            held.append(rng.choice(members, size=count, replace=False))
    out = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=indices.dtype)
    return np.setdiff1d(indices, out), out
