"""The run configuration: one YAML file, validated by pydantic into frozen settings.

Every field has a default, so a user's file only states what differs from the embedded
default (``fedpilot/configs/default.yaml``, which spells every field out). Any problem becomes a
single-line :class:`~fedpilot.errors.ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedpilot.errors import ConfigError
from fedpilot.memsize import parse_memory

LORA_TARGETS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
DEFAULT_CONFIG = "default.yaml"


class StrictModel(BaseModel):
    """A settings block that rejects unknown keys, listing the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                allowed = f"allowed keys: {', '.join(cls.model_fields)}" if cls.model_fields else "no keys are allowed here"
                raise ValueError(f"unknown key {unknown[0]!r}; {allowed}")
        return data


class LoraSettings(StrictModel):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: tuple[Literal["query", "key", "value", "attn_out", "ffn_in", "ffn_out"], ...] = (
        "query",
        "value",
    )

    @field_validator("targets")
    @classmethod
    def _non_empty_unique(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        if not targets:
            raise ValueError(f"name at least one target out of {', '.join(LORA_TARGETS)}")
        if len(set(targets)) != len(targets):
            raise ValueError("each target may appear only once")
        return targets


class ModelSettings(StrictModel):
    name: str = "all-minilm-l6-v2"
    base_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout inside the frozen base model; 0 halves activation memory"
    )
    lora: LoraSettings = LoraSettings()

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from fedpilot.models import MODELS

        return MODELS.check(name)


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
    partition: PartitionSettings = PartitionSettings()

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from fedpilot.datasets import DATASETS

        return DATASETS.check(name)


class MemoryTier(StrictModel):
    fraction: float = Field(gt=0, le=1)
    memory: int = Field(description="bytes")

    @field_validator("memory", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> int:
        return parse_memory(value)


class TieredBudgets(StrictModel):
    """Clients split into memory tiers, e.g. 40 % at 600MiB, 60 % at 1GiB (assigned in client order)."""

    tiers: tuple[MemoryTier, ...]

    @field_validator("tiers")
    @classmethod
    def _fractions_sum_to_one(cls, tiers: tuple[MemoryTier, ...]) -> tuple[MemoryTier, ...]:
        if not tiers:
            raise ValueError("give at least one tier")
        total = sum(t.fraction for t in tiers)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"tier fractions must sum to 1 (they sum to {total:g})")
        return tiers

    def per_client(self, num_clients: int) -> list[int]:
        """Largest-remainder rounding of the fractions to client counts, tiers in order."""
        exact = [t.fraction * num_clients for t in self.tiers]
        counts = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
        for i in by_remainder[: num_clients - sum(counts)]:
            counts[i] += 1
        return [t.memory for t, n in zip(self.tiers, counts) for _ in range(n)]


class FederationSettings(StrictModel):
    num_clients: int = Field(8, ge=1)
    clients_per_round: int | None = Field(None, ge=1, description="None: every client, every round")
    rounds: int = Field(5, ge=1)
    budgets: int | tuple[int, ...] | TieredBudgets | None = Field(
        TieredBudgets.model_validate(
            {"tiers": [{"fraction": 0.4, "memory": "150MiB"}, {"fraction": 0.3, "memory": "190MiB"}, {"fraction": 0.3, "memory": "256MiB"}]}
        ),
        description="memory per client: one size for all, a list (one per client), or {tiers: [...]}",
    )

    @field_validator("budgets", mode="before")
    @classmethod
    def _parse_budgets(cls, value: Any) -> Any:
        if value is None or isinstance(value, TieredBudgets):
            return value
        if isinstance(value, dict):
            try:
                return TieredBudgets.model_validate(value)
            except ValidationError as err:
                raise ValueError(describe_error(err.errors()[0])) from None
        if isinstance(value, list):
            return tuple(parse_memory(v) for v in value)
        return parse_memory(value)

    @model_validator(mode="after")
    def _consistent(self) -> FederationSettings:
        if self.clients_per_round is not None and self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) exceeds num_clients ({self.num_clients})"
            )
        if isinstance(self.budgets, tuple) and len(self.budgets) != self.num_clients:
            raise ValueError(
                f"budgets lists {len(self.budgets)} sizes for {self.num_clients} clients; give one per client"
            )
        return self

    def client_budgets(self) -> list[int | None]:
        """Each client's memory budget in bytes (None: unlimited)."""
        if self.budgets is None:
            return [None] * self.num_clients
        if isinstance(self.budgets, int):
            return [self.budgets] * self.num_clients
        if isinstance(self.budgets, tuple):
            return list(self.budgets)
        return list(self.budgets.per_client(self.num_clients))


class TrainSettings(StrictModel):
    local_steps: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class Config(StrictModel):
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    federation: FederationSettings = FederationSettings()
    train: TrainSettings = TrainSettings()
    strategy: str = "fedpilot"
    strategy_options: dict[str, Any] = Field(default_factory=dict, description="checked by the strategy's Options")
    seed: int = Field(0, ge=0)
    output_dir: str = "runs/default"

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        from fedpilot.strategies import STRATEGIES

        return STRATEGIES.check(name)

    @model_validator(mode="after")
    def _valid_strategy_options(self) -> Config:
        try:
            self.strategy_settings()
        except ValidationError as err:
            problem = describe_error(err.errors()[0])
            raise ValueError(f"strategy_options{'.' if err.errors()[0]['loc'] else ': '}{problem}") from None
        return self

    def strategy_settings(self) -> StrictModel:
        """``strategy_options`` validated by the chosen strategy's own Options model."""
        from fedpilot.strategies import STRATEGIES

        return STRATEGIES.get_or_fail(self.strategy).Options.model_validate(self.strategy_options)


def describe_error(error: dict[str, Any]) -> str:
    """One line for a pydantic error: the dotted field path, the message, the offending input."""
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error", "assertion_error") and "input" in error:
        message = f"{message} (got {error['input']!r})"
    return f"{where}: {message}" if where else message


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a mapping (as read from YAML) into a :class:`Config`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_error(err.errors()[0])}") from None


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config; ``None`` loads the embedded default."""
    if path is None:
        text = resources.files("fedpilot.configs").joinpath(DEFAULT_CONFIG).read_text()
        source = f"<embedded {DEFAULT_CONFIG}>"
    else:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file to --config")
        try:
            text, source = path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    return parse_config(data, source)
