"""Spread the train split over clients with flwr-datasets' partitioners (IID, Dirichlet, pathological)."""

from __future__ import annotations

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
