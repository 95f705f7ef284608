"""The run configuration: one YAML file, validated by pydantic into frozen settings.

Every field has a default, so a user's file only states what differs from the embedded
default (``fedpilot/configs/default.yaml``, which spells every field out). Any problem becomes a
single-line :class:`~fedpilot.core.errors.ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal


import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_serializer, field_validator, model_validator

from fedpilot.core.errors import ConfigError
from fedpilot.core.settings import StrictModel, describe_error
from fedpilot.core.sizes import format_memory, parse_memory
from fedpilot.data.settings import DataSettings, PartitionSettings
from fedpilot.families import MODELS
from fedpilot.strategies import STRATEGIES

__all__ = [  # the data settings live with the data (fedpilot.data.settings); the run's schema names them too
    "Config", "DataSettings", "FederationSettings", "LoraSettings", "MemoryTier", "ModelSettings", "PartitionSettings",
    "TieredBudgets", "TrainSettings", "load_config", "parse_config",
]

DEFAULT_CONFIG = "default.yaml"
DEFAULT_MODEL = "all-minilm-l6-v2"


class LoraSettings(StrictModel):
    rank: int = Field(8, ge=1, description="LoRA rank r of every module (the global rank)")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the LoRA branch is scaled by alpha / rank")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the input of each trained LoRA module")
    targets: tuple[str, ...] = Field((), description="LoRA targets of the model's family (bert-classifier: any of query, key, value, attn_out, ffn_in, "
        "ffn_out; llama-instruct: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj); empty: the "
        "family's default (query, value; q_proj, v_proj)")


class ModelSettings(StrictModel):
    name: str = Field(
        DEFAULT_MODEL, description="the pretrained model: all-minilm-l6-v2 (bert-classifier) or smollm2-135m-instruct "
        "(llama-instruct); or your own checkpoint: a folder holding config.json and the weights (or a Hub id already in "
        "the local Hugging Face cache), its family inferred from config.model_type (bert-classifier: bert, roberta, "
        "xlm-roberta, distilbert, deberta-v2; llama-instruct: llama, qwen2, mistral, gemma)"
    )
    base_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout inside the frozen base model; 0 halves activation memory (BERT's own 0.1 keeps extra "
        "sequence x sequence attention tensors), while LoRA's own dropout still regularises the adapters"
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, validate_default=True, description="the LoRA adapter")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return MODELS.check(name)

    @field_validator("lora")
    @classmethod
    def _targets_of_the_family(cls, lora: LoraSettings, info: ValidationInfo) -> LoraSettings:
        if "name" not in info.data:  # the name was invalid: that error is reported
            return lora
        family = MODELS[info.data["name"]].family
        if not lora.targets:
            return lora.model_copy(update={"targets": family.default_targets})
        try:
            family.check_targets(lora.targets)
        except ValueError as err:
            raise ValueError(f"targets: {err}") from None
        return lora

    device: str = Field("auto", description="where the model runs: auto (cuda when available, else cpu), cpu, cuda or cuda:N; --device on run, compare, profile and plan overrides it")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the frozen base weights (llama-instruct: float32 or bfloat16); LoRA stays float32"
    )

    @field_validator("device")
    @classmethod
    def _a_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError(f"{device!r} is not a device; use auto, cpu, cuda or cuda:N")
        return device

    @field_validator("dtype")
    @classmethod
    def _dtype_of_the_family(cls, dtype: str, info: ValidationInfo) -> str:
        family = MODELS[info.data["name"]].family if "name" in info.data else None
        if family is not None and dtype not in family.dtypes:
            raise ValueError(f"{dtype} is not supported by the {family.name} family (its memory model prices {', '.join(family.dtypes)}); use float32")
        return dtype


class MemoryTier(StrictModel):
    fraction: float = Field(gt=0, le=1, description="share of the clients in this tier (tiers are assigned in client order)")
    memory: int = Field(description="the tier's memory budget: a size such as 150MiB or 1GiB (bytes internally)")

    @field_validator("memory", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> int:
        return parse_memory(value)

    @field_serializer("memory", when_used="json")
    def _written(self, memory: int) -> str:
        return format_memory(memory)  # a bare number would read back as MiB


class TieredBudgets(StrictModel):
    """Clients split into memory tiers, e.g. 40 % at 600MiB, 60 % at 1GiB (assigned in client order)."""

    tiers: tuple[MemoryTier, ...] = Field(description="the tiers; their fractions sum to 1")

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
    num_clients: int = Field(8, ge=1, description="clients in the federation (each gets one partition of the train split)")
    clients_per_round: int | None = Field(None, ge=1, description="clients sampled per round; null: every client, every round")
    rounds: int = Field(5, ge=1, description="federated rounds")
    memory_margin: float = Field(
        0.01, ge=0, lt=0.5,
        description="share of each budget planners keep free for the cost model's error (benchmarks/memory_model.py)",
    )
    update_norm_bound: float | None = Field(
        10.0, gt=1,
        description="reject an update whose RMS change exceeds this multiple of the round's median (null: no bound)",
    )
    budgets: int | tuple[int, ...] | TieredBudgets | None = Field(
        TieredBudgets.model_validate(
            {"tiers": [{"fraction": 0.4, "memory": "150MiB"}, {"fraction": 0.3, "memory": "190MiB"}, {"fraction": 0.3, "memory": "256MiB"}]}
        ),
        description="memory per client: one size for all (e.g. 1GiB), a list with one size per client, or "
        "{tiers: [{fraction: 0.4, memory: 600MiB}, ...]}; null: unlimited",
    )
    round_timeout: float | None = Field(
        600.0, gt=0,
        description="seconds a phase (scoring, training) waits for the clients' replies on Flower; a client silent "
        "that long is recorded as dropped (null: wait forever). The in-process simulator ignores it",
    )
    min_replies: int = Field(
        1, ge=1,
        description="valid updates a round needs; with fewer, the global model stays unchanged and the round is "
        "recorded as skipped (both drivers)",
    )
    server_lr: float = Field(
        1.0, gt=0, le=1,
        description="the share of the way the global adapter moves to each round's aggregate (1: takes it; below 1 "
        "damps the round-to-round swing of a few sampled non-IID clients; the same for every strategy: each tensor "
        "moves linearly, and where a strategy merges into the frozen weights the merge is corrected so that each "
        "module's effective weight D + s B A moves exactly that share)",
    )
    payload: Literal["full", "assigned"] = Field(
        "full",
        description="what a task carries: full = the whole global adapter (frozen LoRA modules take part in the "
        "client's forward pass); assigned = only the assigned (or scored) modules' tensors and the head, every other "
        "LoRA module runs as the base model (its LoRA tensors zero); strategies with base deltas (fedex-lora, flora) "
        "refuse assigned",
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
        per_round = self.num_clients if self.clients_per_round is None else self.clients_per_round
        if self.min_replies > per_round:
            raise ValueError(
                f"min_replies ({self.min_replies}) exceeds the {per_round} clients a round samples, so every round "
                f"would be skipped; lower min_replies"
            )
        if isinstance(self.budgets, tuple) and len(self.budgets) != self.num_clients:
            raise ValueError(
                f"budgets lists {len(self.budgets)} sizes for {self.num_clients} clients; give one per client"
            )
        return self

    @field_serializer("budgets", when_used="json")
    def _written(self, budgets: Any) -> Any:
        """Sizes with their unit, so that a dumped config parses back to the same bytes."""
        if isinstance(budgets, int):
            return format_memory(budgets)
        if isinstance(budgets, tuple):
            return [format_memory(b) for b in budgets]
        return budgets

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
    local_steps: int = Field(8, ge=1, description="optimiser steps each client takes per round")
    batch_size: int = Field(16, ge=1, description="training batch size (it sets what each module costs in memory)")
    eval_batch_size: int = Field(64, ge=1, description="batch size of the server's evaluation")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="the clients' optimiser, fresh every round")
    lr: float = Field(2e-3, gt=0, description="the clients' learning rate")
    weight_decay: float = Field(0.0, ge=0, description="the optimiser's weight decay")
    logit_adjustment: float = Field(
        0.0, ge=0,
        description="tau: each client trains on its logits plus tau x the log of its own label prior (add-one "
        "smoothed), so local label skew stops pulling the shared head toward each client's prior (logit adjustment, "
        "Menon et al. 2021, as FedLC uses it); a decoder family moves only the answer tokens' logits in its "
        "full-vocabulary softmax, so tau near 0 is the plain loss; the server evaluates the plain logits, and clients "
        "score modules on the plain loss unless fedpilot's score_loss: trained. 0: off",
    )
    evaluate_on: Literal["test", "validation"] = Field(
        "test", description="the split the server evaluates on every round: test, or validation for tuning runs (never tune on "
        "the test split); validation needs data.validation_fraction"
    )
    eval_every: int = Field(1, ge=1, description="evaluate the global model every this many rounds (round 0 and the last round always; rounds between carry no accuracy)")
    eval_subset: int | None = Field(
        None, ge=1, description="evaluate on a fixed, seeded, stratified subset of this many examples (the last round: the whole split); null: the whole split"
    )
    evaluate: Literal["server", "clients", "both"] = Field(
        "server", description="who evaluates the global adapter: server (on its central split, train.evaluate_on), "
        "clients (each client sampled in a round evaluates on its held-out rows, data.client_test_fraction, and the "
        "server pools their counts: the round's accuracy, macro-F1 and loss; a client whose budget cannot hold the "
        "evaluation is skipped) or both (the server's metrics as with server, the clients' under clients_ keys); "
        "classification only"
    )
    micro_batch: int = Field(
        0, ge=0, description="every client runs each batch as micro-batches of this many rows and accumulates their "
        "gradients into the same optimiser step (the same update, less memory, a slower step), and every memory-aware "
        "strategy plans with the cost model of that micro-batch: gradient accumulation as any method can use it; a "
        "strategy that plans micro-batches itself (fedpilot's micro_batching: planned) chooses one per client between "
        "the whole batch and this; 0: the whole batch (and planned micro-batches go down to one row)"
    )
    client_eval_batch_size: int | None = Field(
        None, ge=1, description="batch size of a client's evaluation (train.evaluate: clients or both); its memory is "
        "priced by the cost model's inference term; null: train.batch_size, the batch the cost model is calibrated at"
    )

    @model_validator(mode="after")
    def _micro_batch_within_the_batch(self) -> TrainSettings:
        if self.micro_batch >= self.batch_size:
            raise ValueError(
                f"train.micro_batch ({self.micro_batch}) must be below train.batch_size ({self.batch_size}): a micro-batch "
                "splits the batch; use 1 to train.batch_size - 1, or 0 for the whole batch"
            )
        return self

    def client_batch_size(self) -> int:
        """The batch size of a client's evaluation: ``client_eval_batch_size``, or ``batch_size`` when null."""
        return self.batch_size if self.client_eval_batch_size is None else self.client_eval_batch_size


class Config(StrictModel):
    model: ModelSettings = Field(ModelSettings(), description="the pretrained model and its LoRA adapter")
    data: DataSettings = Field(DataSettings(), description="the corpus, its splits and the partition over clients")
    federation: FederationSettings = Field(FederationSettings(), description="clients, rounds, memory budgets and what a round accepts")
    train: TrainSettings = Field(TrainSettings(), description="local training and the server's evaluation")
    task: Literal["classification", "instruction"] = Field(
        "classification", description="classification: one label per text (accuracy, macro-F1); instruction: write each "
        "prompt's response, loss on the response tokens only, evaluated by ROUGE-L of greedy generations and perplexity "
        "(llama-instruct family; instruction data: dataset bbc-headlines, or data.prompt_column and data.response_column)"
    )
    strategy: str = Field("fedpilot", description="the registered strategy (docs/strategies.md)")
    strategy_options: dict[str, Any] = Field(default_factory=dict, description="the strategy's own options, checked by its Options model (below)")
    seed: int = Field(0, ge=0, description="the run seed: data split, partition, sampling and every client's training derive from it")
    output_dir: str = Field("runs/default", description="where the run writes its outputs (--out overrides it)")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        return STRATEGIES.check(name)

    @model_validator(mode="after")
    def _valid_strategy_options(self) -> Config:
        try:
            self.strategy_settings()
        except ValidationError as err:
            problem = describe_error(err.errors()[0])
            raise ValueError(f"strategy_options{'.' if err.errors()[0]['loc'] else ': '}{problem}") from None
        return self

    @model_validator(mode="after")
    def _payload_fits_the_strategy(self) -> Config:
        """``payload: assigned`` leaves out the modules a client does not train; a strategy that keeps base
        deltas (dense changes merged into frozen weights, part of every client's forward pass) needs them all."""
        if self.federation.payload == "assigned" and STRATEGIES.get_or_fail(self.strategy).capabilities.base_deltas:
            raise ValueError(
                f"federation.payload: assigned cannot carry strategy {self.strategy!r}'s base deltas (changes of the "
                f"frozen weights every client's forward pass needs); use payload: full"
            )
        return self

    @model_validator(mode="after")
    def _task_fits_data_and_model(self) -> Config:
        if self.data.task != self.task:
            fix = ("dataset: bbc-headlines, or data.prompt_column and data.response_column" if self.task == "instruction"
                   else "a classification dataset, or data.text_column and data.label_column")
            raise ValueError(f"task: {self.task} needs {self.task} data, and data.dataset {self.data.dataset} is {self.data.task} data; "
                             f"set task: {self.data.task} or give {fix}")
        family = MODELS[self.model.name].family
        if self.task not in family.tasks:
            raise ValueError(f"task: {self.task} is not served by the {family.name} family of {self.model.name} (it serves "
                             f"{', '.join(family.tasks)}); use a decoder model (llama-instruct) or task: classification")
        if self.task == "instruction" and self.train.logit_adjustment:
            raise ValueError("train.logit_adjustment moves label logits of a classifier; set it to 0 for task: instruction")
        return self

    @model_validator(mode="after")
    def _validation_split_exists(self) -> Config:
        if self.train.evaluate_on == "validation" and self.data.validation_fraction is None:
            raise ValueError(
                "train.evaluate_on: validation needs a validation split; set data.validation_fraction (e.g. 0.1) "
                "or use evaluate_on: test"
            )
        return self

    @model_validator(mode="after")
    def _clients_can_evaluate(self) -> Config:
        if self.train.evaluate == "server":
            return self
        if self.task != "classification":
            raise ValueError(
                f"train.evaluate: {self.train.evaluate} pools classification counts; task: {self.task} is evaluated by the "
                "server only, use train.evaluate: server"
            )
        if self.data.client_test_fraction is None:
            raise ValueError(
                f"train.evaluate: {self.train.evaluate} needs held-out rows on every client; set data.client_test_fraction "
                "(e.g. 0.2) or use train.evaluate: server"
            )
        return self

    def strategy_settings(self) -> StrictModel:
        """``strategy_options`` validated by the chosen strategy's own Options model."""
        return STRATEGIES.get_or_fail(self.strategy).Options.model_validate(self.strategy_options)

    def proxy_fraction(self) -> float | None:
        """The share of each class held out as the server's proxy set: ``data.proxy_fraction`` if given,
        else the strategy's default where it needs a proxy set, else None (no proxy set)."""
        if self.data.proxy_fraction is not None:
            return self.data.proxy_fraction
        capabilities = STRATEGIES.get_or_fail(self.strategy).capabilities
        return capabilities.proxy_default_fraction if capabilities.needs_proxy else None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (not "last one wins")."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: let the default constructor report it
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping; keep one", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


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
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    return parse_config(data, source)
