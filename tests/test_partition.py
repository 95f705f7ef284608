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


TIERED = PartitionSettings(kind="label-tiers", tier_fractions=(0.25, 0.75), tier_labels=((0.5, 1.0, 0.0, 0.2, 0.2), (0.5, 0.0, 1.0, 0.8, 0.8)))


@pytest.mark.parametrize(
    "settings",
    [PartitionSettings(kind="iid"), PartitionSettings(kind="dirichlet", alpha=0.5), PartitionSettings(kind="pathological", classes_per_client=2),
     TIERED],
    ids=["iid", "dirichlet", "pathological", "label-tiers"],
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


def test_label_tiers_deal_each_label_to_the_groups_by_their_shares_and_evenly_within() -> None:
    from fedpilot.data.partition import tier_sizes

    labels = np.repeat(np.arange(5), [101, 40, 60, 33, 7])
    shards = partition_indices(labels, 8, TIERED, seed=3)
    assert tier_sizes([0.25, 0.75], 8) == [2, 6]
    counts = np.array([np.bincount(labels[s], minlength=5) for s in shards])  # clients x labels
    # per label, the groups' rows by largest remainder of share x rows: label 0 101 -> 50.5 / 50.5 -> 51 / 50 (ties: the first)
    expected_groups = np.array([[51, 40, 0, 7, 1], [50, 0, 60, 26, 6]])
    assert np.array_equal(np.stack([counts[:2].sum(0), counts[2:].sum(0)]), expected_groups)
    for group, clients in ((0, counts[:2]), (1, counts[2:])):  # within a group, each label evenly: sizes differ by at most one
        assert np.all(clients.max(0) - clients.min(0) <= 1), group
    assert counts[2:, 1].sum() == 0 and counts[:2, 2].sum() == 0  # label 1 only in the first group, label 2 only in the second
    again = partition_indices(labels, 8, TIERED, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    assert not all(np.array_equal(a, b) for a, b in zip(shards, partition_indices(labels, 8, TIERED, seed=4)))


def test_label_tiers_with_the_budget_fractions_make_the_budget_tiers() -> None:
    from fedpilot.config import TieredBudgets
    from fedpilot.data.partition import tier_sizes

    for fractions, clients in (((0.34, 0.33, 0.33), 40), ((0.45, 0.45, 0.10), 40), ((0.34, 0.33, 0.33), 12), ((0.4, 0.3, 0.3), 7)):
        budgets = TieredBudgets.model_validate({"tiers": [{"fraction": f, "memory": f"{100 + i}MiB"} for i, f in enumerate(fractions)]})
        per_client = budgets.per_client(clients)
        assert tier_sizes(list(fractions), clients) == [per_client.count(b) for b in dict.fromkeys(per_client)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "iid", "tier_fractions": (1.0,)}, "are for kind: label-tiers, not iid"),
        ({"kind": "label-tiers"}, "needs tier_fractions and one row of tier_labels per tier"),
        ({"kind": "label-tiers", "tier_fractions": (0.5, 0.4), "tier_labels": ((1.0,), (0.0,))}, "sum to 1"),
        ({"kind": "label-tiers", "tier_fractions": (0.5, 0.5), "tier_labels": ((1.0, 0.5), (0.0, 0.0))}, "label 1's shares over the tiers sum to 0.5"),
        ({"kind": "label-tiers", "tier_fractions": (0.5, 0.5), "tier_labels": ((1.0, 0.5), (0.0,))}, "rows of the same length"),
    ],
)
def test_label_tiers_settings_are_checked_naming_the_field(fields: dict, message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        PartitionSettings(**fields)


def test_label_tiers_that_do_not_fit_the_dataset_or_leave_a_client_empty_are_config_errors() -> None:
    labels = np.repeat(np.arange(3), [10, 10, 2])
    two_labels = PartitionSettings(kind="label-tiers", tier_fractions=(0.5, 0.5), tier_labels=((1.0, 0.0), (0.0, 1.0)))
    with pytest.raises(ConfigError, match="tier_labels: each tier gives 2 label shares, the dataset has 3 labels"):
        partition_indices(labels, 4, two_labels, seed=0)
    sparse = PartitionSettings(kind="label-tiers", tier_fractions=(0.5, 0.5), tier_labels=((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    with pytest.raises(ConfigError, match="client 6 gets no rows"):  # the second group's 4 clients share label 2's 2 rows
        partition_indices(labels, 8, sparse, seed=0)
