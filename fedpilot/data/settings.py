"""The data sections of the run configuration (``data`` and ``data.partition``): which corpus, how it is
split and how the train split is spread over clients. They live with the data that reads them;
:mod:`fedpilot.config` assembles them into the run's schema."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fedpilot.core.settings import StrictModel
from fedpilot.data.datasets import DATASETS


class PartitionSettings(StrictModel):
    """How the train split is spread over clients (flwr-datasets partitioners)."""

    kind: Literal["iid", "dirichlet", "pathological"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = more label skew")
    min_partition_size: int = Field(10, ge=0, description="Dirichlet: resample until every client has this many")
    classes_per_client: int = Field(2, ge=1, description="pathological: labels per client")


class DataSettings(StrictModel):
    dataset: str = "bbc-news"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_length: int = Field(64, ge=8, le=512)
    max_samples: int | None = Field(None, ge=10, description="use a stratified subset of the corpus")
    proxy_fraction: float | None = Field(
        None, gt=0, lt=0.5,
        description="share of each class held out of the train split as the server's proxy set (for strategies "
        "that score on the server, e.g. fisher); null: none, or the strategy's own default if it needs one",
    )
    validation_fraction: float | None = Field(
        None, gt=0, lt=0.5,
        description="share of each class held out of the train split (before the proxy set and partitioning) as a "
        "validation split for choosing hyperparameters; clients never see it; null: no validation split",
    )
    partition: PartitionSettings = PartitionSettings()

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return DATASETS.check(name)
