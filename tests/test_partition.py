"""Partitions of the real BBC train split: disjoint, complete, and as skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest

from fedpilot.config import Config, PartitionSettings
from fedpilot.core.errors import ConfigError
from fedpilot.data.partition import partition_indices
from fedpilot.families.encoding import load_split


@pytest.fixture(scope="module")
def train_labels() -> np.ndarray:
    config = Config()
    return load_split(config.data, config.model.name, seed=0).train.labels.numpy()


def label_skew(labels: np.ndarray, shards: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    num_classes = labels.max() + 1
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[s], minlength=num_classes) / len(s) - overall).sum() for s in shards]))


@pytest.mark.parametrize(
    "settings",
    [PartitionSettings(kind="iid"), PartitionSettings(kind="dirichlet", alpha=0.5), PartitionSettings(kind="pathological", classes_per_client=2)],
    ids=["iid", "dirichlet", "pathological"],
)
def test_partition_is_disjoint_and_covers_the_train_split(train_labels: np.ndarray, settings: PartitionSettings) -> None:
    shards = partition_indices(train_labels, 8, settings, seed=0)
    assert len(shards) == 8 and all(len(s) > 0 for s in shards)
    joined = np.concatenate(shards)
    assert len(joined) == len(np.unique(joined)) == len(train_labels)
    assert np.array_equal(np.sort(joined), np.arange(len(train_labels)))


def test_iid_sizes_are_balanced(train_labels: np.ndarray) -> None:
    sizes = [len(s) for s in partition_indices(train_labels, 8, PartitionSettings(kind="iid"), seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_small_dirichlet_alpha_skews_labels(train_labels: np.ndarray) -> None:
    skewed = label_skew(train_labels, partition_indices(train_labels, 8, PartitionSettings(alpha=0.1), seed=0))
    mild = label_skew(train_labels, partition_indices(train_labels, 8, PartitionSettings(alpha=100.0), seed=0))
    iid = label_skew(train_labels, partition_indices(train_labels, 8, PartitionSettings(kind="iid"), seed=0))
    assert skewed > 0.4 > 0.1 > max(mild, iid)


def test_pathological_gives_k_classes_per_client(train_labels: np.ndarray) -> None:
    for shard in partition_indices(train_labels, 8, PartitionSettings(kind="pathological", classes_per_client=2), seed=1):
        assert len(np.unique(train_labels[shard])) <= 2


def test_same_seed_same_partition(train_labels: np.ndarray) -> None:
    first = partition_indices(train_labels, 8, PartitionSettings(alpha=0.3), seed=7)
    again = partition_indices(train_labels, 8, PartitionSettings(alpha=0.3), seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_impossible_pathological_request_names_the_field(train_labels: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="classes_per_client: 6 exceeds the 5 classes"):
        partition_indices(train_labels, 8, PartitionSettings(kind="pathological", classes_per_client=6), seed=0)


def test_an_impossible_dirichlet_request_is_one_line_naming_the_fix() -> None:
    labels = np.repeat(np.arange(5), 356)
    with pytest.raises(ConfigError, match=r"data.partition.min_partition_size: Dirichlet\(0.5\) could not give each of 100 clients 10 .* lower min_partition_size, raise alpha, or use fewer clients") as err:
        partition_indices(labels, 100, PartitionSettings(alpha=0.5, min_partition_size=10), seed=0)
    assert "\n" not in str(err.value)
