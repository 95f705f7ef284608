"""Spread the train split over clients with flwr-datasets' partitioners (IID, Dirichlet, pathological), or
by label tiers (a label mix per group of clients, which none of those can express for any client count)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from fedpilot.core.errors import ConfigError
from fedpilot.data.settings import PartitionSettings


def partition_indices(
    labels: np.ndarray, num_clients: int, settings: PartitionSettings, seed: int
) -> list[np.ndarray]:
    """Disjoint train-split indices per client whose union is the whole split."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    num_classes = int(labels.max()) + 1
    if num_clients > len(labels):
        raise ConfigError(f"federation.num_clients: {num_clients} clients for {len(labels)} training samples")
    if settings.kind == "label-tiers":
        return label_tier_indices(labels, num_clients, settings, seed)
    if settings.kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
    elif settings.kind == "dirichlet":
        if settings.min_partition_size * num_clients > len(labels):
            raise ConfigError(
                f"data.partition.min_partition_size: {settings.min_partition_size} x {num_clients} clients "
                f"exceeds the {len(labels)} training samples; lower it"
            )
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=settings.alpha,
            min_partition_size=settings.min_partition_size,
            seed=seed,
        )
    else:
        if settings.classes_per_client > num_classes:
            raise ConfigError(
                f"data.partition.classes_per_client: {settings.classes_per_client} exceeds the "
                f"{num_classes} classes of the dataset"
            )
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=settings.classes_per_client,
            seed=seed,
        )
    # IidPartitioner shards contiguously and our split is ordered by label: shuffle first.
    rows = Dataset.from_dict({"label": labels.tolist(), "index": list(range(len(labels)))})
    partitioner.dataset = rows.shuffle(seed=seed)
    try:
        with warnings.catch_warnings():  # flwr-datasets warns at every retry; its final failure is what matters
            warnings.simplefilter("ignore", UserWarning)
            return [np.array(sorted(partitioner.load_partition(cid)["index"]), dtype=np.int64) for cid in range(num_clients)]
    except ValueError as err:
        if settings.kind != "dirichlet":
            raise ConfigError(f"data.partition: {settings.kind} partitioning of {len(labels)} samples over {num_clients} clients failed: {err}") from None
        average = len(labels) // num_clients
        raise ConfigError(
            f"data.partition.min_partition_size: Dirichlet({settings.alpha:g}) could not give each of {num_clients} clients "
            f"{settings.min_partition_size} of the {len(labels)} training samples ({average} on average); "
            f"lower min_partition_size, raise alpha, or use fewer clients"
        ) from None


def tier_sizes(fractions: list[float], num_clients: int) -> list[int]:
    """Clients per group: largest-remainder rounding of the fractions, groups in order (as
    ``federation.budgets``' tiers are rounded, so the same fractions give the same groups)."""
    exact = [f * num_clients for f in fractions]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: num_clients - sum(counts)]:
        counts[i] += 1
    return counts


def label_tier_indices(labels: np.ndarray, num_clients: int, settings: PartitionSettings, seed: int) -> list[np.ndarray]:
    """``label-tiers``: the clients form groups in client order (:func:`tier_sizes`); each label's rows,
    shuffled with ``seed``, go to the groups in proportion to the group's share of that label (largest
    remainder), and within a group are dealt evenly (sizes differ by at most one) to its clients."""
    shares = settings.tier_labels
    num_classes = int(labels.max()) + 1
    if len(shares[0]) != num_classes:
        raise ConfigError(f"data.partition.tier_labels: each tier gives {len(shares[0])} label shares, the dataset has "
                          f"{num_classes} labels; give one share per label, in label order")
    sizes = tier_sizes(list(settings.tier_fractions), num_clients)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rng = np.random.default_rng(seed)
    shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in range(num_classes):
        rows = rng.permutation(np.flatnonzero(labels == label))
        counts = tier_sizes([row[label] for row in shares], len(rows))
        for group, part in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
            if len(part) and not sizes[group]:
                raise ConfigError(f"data.partition.tier_fractions: tier {group} holds rows of label {label} but {num_clients} clients "
                                  f"give it no client; raise its fraction or num_clients")
            clients = range(starts[group], starts[group + 1])
            for cid, piece in zip(clients, np.array_split(part, len(clients)) if len(clients) else []):
                shards[cid].append(piece)
    result = [np.sort(np.concatenate(pieces)).astype(np.int64) if pieces else np.array([], dtype=np.int64) for pieces in shards]
    empty = [cid for cid, shard in enumerate(result) if not len(shard)]
    if empty:
        raise ConfigError(f"data.partition.tier_labels: client {empty[0]} gets no rows (its tier's label shares are too small for its "
                          f"{sizes[next(g for g in range(len(sizes)) if starts[g] <= empty[0] < starts[g + 1])]} clients); raise them")
    return result


CLIENT_TEST_SALT = 0xC1E57  # the seed stream of the clients' held-out rows (data.client_test_fraction)


def client_test_split(shard: np.ndarray, labels: np.ndarray, fraction: float, seed: int, cid: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, held-out rows)`` of client ``cid``'s ``shard`` (rows of the train split; ``labels``: the
    train split's labels), both sorted, disjoint, their union the shard: ``data.client_test_fraction``.

    ``ceil(fraction * n)`` of the shard's n rows are held out (at least 1), stratified by label: each label
    gets its proportional share rounded down and the rows left over go to the largest remainders (ties: the
    smaller label); the rows within a label are drawn by a generator seeded by ``(seed, salt, cid)``, so a
    client's split is the same in every driver and does not depend on the other clients. A shard left
    without a training row (or empty) is a ConfigError naming the client and the setting.
    """
    shard = np.asarray(shard, dtype=np.int64)
    n = len(shard)
    held = math.ceil(fraction * n - 1e-9)  # no float rounding up of an exact product (0.1 x 30 = 3.0000000000000004)
    if n < 2 or held >= n:
        raise ConfigError(
            f"data.client_test_fraction: {fraction:g} of client {cid}'s {n} row(s) holds out {held} and leaves {n - held} to train on; "
            f"every client needs at least 1 of each: lower client_test_fraction or give each client more rows"
        )
    shard_labels = labels[shard]
    classes, counts = np.unique(shard_labels, return_counts=True)
    exact = counts * held / n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: held - quota.sum()]:
        quota[i] += 1
    rng = np.random.default_rng([seed, CLIENT_TEST_SALT, cid])
    chosen = np.concatenate([rng.permutation(shard[shard_labels == c])[:q] for c, q in zip(classes, quota)])
    test = np.sort(chosen)
    return np.setdiff1d(shard, test), test
