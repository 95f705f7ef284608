"""The data sections of the run configuration (``data`` and ``data.partition``): which corpus, how it is
split and how the train split is spread over clients. They live with the data that reads them;
:mod:`fedpilot.config` assembles them into the run's schema."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedpilot.core.settings import StrictModel
from fedpilot.data.datasets import DATASETS, registered_task
from fedpilot.data.files import cached_file_corpus, check_source, looks_like_path


class PartitionSettings(StrictModel):
    """How the train split is spread over clients (flwr-datasets partitioners; label-tiers is our own)."""

    kind: Literal["iid", "dirichlet", "pathological", "label-tiers"] = Field(
        "dirichlet",
        description="iid: uniform rows; dirichlet: label skew by Dirichlet(alpha); pathological: classes_per_client labels "
        "per client; label-tiers: the label mix depends on the client's group (tiers), uniform within a group",
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = more label skew")
    min_partition_size: int = Field(10, ge=0, description="dirichlet: resample until every client has at least this many samples")
    classes_per_client: int = Field(2, ge=1, description="pathological: labels per client")
    tier_fractions: tuple[float, ...] = Field(
        (),
        description="label-tiers: the share of the clients in each group, groups in client order (sizes rounded as "
        "federation.budgets' tiers are: give their fractions and the groups are the memory tiers), e.g. [0.5, 0.5]",
    )
    tier_labels: tuple[tuple[float, ...], ...] = Field(
        (),
        description="label-tiers: per group, its share of each label's rows in label order; each label's shares over the "
        "groups sum to 1, e.g. [[0.2, 1.0], [0.8, 0.0]] (only the first group holds label 1)",
    )

    @model_validator(mode="after")
    def _tiers_fit_the_kind(self) -> PartitionSettings:
        if self.kind != "label-tiers":
            if self.tier_fractions or self.tier_labels:
                raise ValueError(f"tier_fractions and tier_labels are for kind: label-tiers, not {self.kind}; remove them or set kind: label-tiers")
            return self
        if not self.tier_fractions or len(self.tier_labels) != len(self.tier_fractions):
            raise ValueError("kind: label-tiers needs tier_fractions and one row of tier_labels per tier, e.g. "
                             "tier_fractions: [0.5, 0.5], tier_labels: [[0.2, 1.0], [0.8, 0.0]]")
        if any(not 0 < f <= 1 for f in self.tier_fractions) or abs(sum(self.tier_fractions) - 1) > 1e-6:
            raise ValueError(f"tier_fractions {list(self.tier_fractions)}: give shares in (0, 1] that sum to 1")
        if len({len(row) for row in self.tier_labels}) > 1 or not self.tier_labels[0]:
            raise ValueError("tier_labels: give every tier one share per label (rows of the same length)")
        if any(not 0 <= x <= 1 for row in self.tier_labels for x in row):
            raise ValueError("tier_labels: each share must be in [0, 1]")
        for label, shares in enumerate(zip(*self.tier_labels)):
            if abs(sum(shares) - 1) > 1e-6:
                raise ValueError(f"tier_labels: label {label}'s shares over the tiers sum to {sum(shares):g}; make each label's shares sum to 1")
        return self


class DataSettings(StrictModel):
    dataset: str = Field(
        "bbc-news", description="bbc-news: 2,225 BBC News articles, 5 topics; rotten-tomatoes: 13,905 review snippets and plot "
        "synopses, 3 classes; bbc-headlines (task: instruction): write each BBC News article's headline from its body, "
        "the topic its group; or your own data: a .csv, .jsonl, .json (a list of records) or .parquet file, or a folder "
        "written by datasets' save_to_disk (its train split; its test split, if any, is the test split)"
    )
    text_column: str = Field("text", description="own data: the column holding each example's text")
    label_column: str = Field("label", description="own data: the column holding each example's label (strings or integers; the class list is the train split's labels, recorded in the run)")
    prompt_column: str | None = Field(
        None, description="own instruction data (task: instruction): the column holding each example's prompt; set it "
        "and response_column instead of text_column and label_column"
    )
    response_column: str | None = Field(None, description="own instruction data: the column holding the response the model learns to write")
    group_column: str | None = Field(
        None, description="own instruction data: a column grouping the examples (e.g. a topic), used as labels are to "
        "stratify the splits and skew the partition; null: every example in one group"
    )
    max_response_length: int = Field(
        32, ge=1, le=256, description="task: instruction: response tokens kept (the end-of-turn token included) and the "
        "most tokens generated at evaluation; the prompt is cut to fit max_length with them"
    )
    test_dataset: str | None = Field(
        None, description="own data: a file of the same kind and columns holding the test split (test_fraction is then "
        "unused, and every test label must occur in the train data); null: a stratified test_fraction of dataset"
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of each class held out as the test split (stratified)")
    max_length: int = Field(64, ge=8, le=512, description="tokens per example (longer texts are cut)")
    max_samples: int | None = Field(None, ge=10, description="use a stratified subset of this many examples of the corpus; null: the whole corpus")
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
    client_test_fraction: float | None = Field(
        None, gt=0, lt=1,
        description="share of each client's shard held out as its own test rows (ceil of the share, at least 1, drawn "
        "stratified by label from the run seed and the client id), on which it evaluates the global adapter with "
        "train.evaluate: clients or both; the rest is what it trains on; null: clients train on their whole shard",
    )
    partition: PartitionSettings = Field(PartitionSettings(), description="how the train split is spread over the clients")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name in DATASETS or not looks_like_path(name):
            try:
                return DATASETS.check(name)
            except ValueError as err:
                raise ValueError(f"{err}; or give a .csv, .jsonl, .json or .parquet file or a save_to_disk folder") from None
        return check_source(name, "data.dataset")

    @field_validator("test_dataset")
    @classmethod
    def _test_file(cls, name: str | None) -> str | None:
        return None if name is None else check_source(name, "data.test_dataset")

    @property
    def task(self) -> str:
        """The task the data poses: ``instruction`` (a registered instruction corpus, or prompt and response columns) or ``classification``."""
        if self.dataset in DATASETS:
            return registered_task(self.dataset)
        return "classification" if self.prompt_column is None else "instruction"

    @model_validator(mode="after")
    def _readable_data(self) -> DataSettings:
        """Own data is read and checked now (columns, labels, encoding, a drawable split), before a run writes anything."""
        if (self.prompt_column is None) != (self.response_column is None):
            missing = "response_column" if self.response_column is None else "prompt_column"
            raise ValueError(f"instruction data needs both prompt_column and response_column; set data.{missing}")
        if self.group_column is not None and self.prompt_column is None:
            raise ValueError("data.group_column groups instruction data; set prompt_column and response_column, or use label_column")
        if self.dataset in DATASETS:
            if self.test_dataset is not None:
                raise ValueError(f"data.test_dataset applies to your own data files; the registered {self.dataset} is split by test_fraction")
            if self.prompt_column is not None:
                raise ValueError(f"data.prompt_column and response_column name columns of your own files; the registered {self.dataset} has its own")
            return self
        import numpy as np

        from fedpilot.data.indices import train_test_indices

        corpus = cached_file_corpus(self)
        train_test_indices(np.asarray(corpus.labels), self, 0, corpus.test_start)
        return self
