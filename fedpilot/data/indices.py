"""Which rows of a corpus form its train and test splits (numpy and scikit-learn only, no torch), so that a
config can be checked against its data before anything runs."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from fedpilot.core.errors import ConfigError


def train_test_indices(labels: np.ndarray, settings: Any, seed: int, test_start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), the train rows sorted. ``test_start``: rows from it on are the test split as
    given (``data.max_samples`` then subsamples the train rows only); None: a stratified ``data.test_fraction``
    of the (``max_samples``-subsampled) corpus. A split that cannot be drawn is a ConfigError naming the setting."""
    indices = np.arange(len(labels) if test_start is None else test_start)
    given_test = None if test_start is None else np.arange(test_start, len(labels))
    try:
        if settings.max_samples is not None and settings.max_samples < len(indices):
            indices, _ = train_test_split(indices, train_size=settings.max_samples, stratify=labels[indices], random_state=seed)
        if given_test is not None:
            return np.sort(indices), given_test
        train_idx, test_idx = train_test_split(indices, test_size=settings.test_fraction, stratify=labels[indices], random_state=seed)
    except ValueError as err:
        counts = np.bincount(labels[indices])
        raise ConfigError(
            f"data: the corpus ({len(indices)} examples, {len(counts)} labels, the rarest with {counts[counts > 0].min()}) cannot be "
            f"split with test_fraction {settings.test_fraction} and max_samples {settings.max_samples} ({err}); give more examples "
            f"of each label, change data.test_fraction or data.max_samples, or give data.test_dataset"
        ) from None
    return np.sort(train_idx), test_idx
