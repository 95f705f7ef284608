"""The Llama cost model estimated from the model's config alone: no weights loaded, no forward pass.

Terms, in float32 bytes, for batch B, sequence T (tokens N = B·T), hidden H, MLP width I, A query
heads and KV key/value heads of size D (grouped-query attention: k_proj and v_proj map H to KV·D,
smaller than q_proj's A·D), L layers, vocabulary V, LoRA rank r:

- fixed = every weight (embeddings, the LM head unless tied, the layers, the norms, all LoRA
  matrices) + the forward pass's largest live buffers, 4·N·(3I + 2H + 3A·D) + 4·B·A·T² (the MLP's
  gate, up and product tensors, the attention's q, k and v with their rotated copies, the scores)
  + the answer logits, 4·3·B·K·V (logits, their log-softmax and its gradient, at the last K positions only:
  K = 1 for classification, the response positions for instruction tuning, ``logit_positions``).
- activation[l] = (L - l) · per_layer, where per_layer is what one frozen decoder layer saves so that
  the gradient can cross it: 4·N·(2H + 4A·D + 3I) (the two RMSNorm inputs, the attention's q, k, v
  (k and v repeated to A heads) and output, the SiLU input, its output and the up projection), plus
  one byte per input element for each LoRA dropout mask on the path, plus, with attention dropout,
  a B·A·T² mask and the dropped-out probabilities.
- module[m] = its parameters with gradient and optimiser state, 4·P·(2 + states), plus the inputs it
  saves itself: the dropped-out input 4·N·d_in and the rank-r projection 4·N·r.
- with activation checkpointing: activation[l] = (L - l) · N·H (each layer's input hidden state) + one
  layer's recompute (per_layer and its modules' saved inputs); module[m] = its parameters with gradient
  and optimiser state.

With ``model.dtype: bfloat16`` the frozen weights, the forward buffers and the saved activations take 2
bytes an element instead of 4, except what stays float32: the LoRA matrices and everything of the
module terms (PEFT computes LoRA in float32), the RMSNorm inputs (LlamaRMSNorm saves its float32
upcast) and the answer logits (read in float32).

The same terms hold for the decoders that share Llama's layout (Qwen2, Mistral, Gemma): their sizes come
from their own config.json (Qwen2 adds q, k and v biases to the weights).

Pure: reads the model's config.json (or, for a model shipped only as GGUF, its known config).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fedpilot.planning.costmodel import FLOAT_BYTES as FLOAT
from fedpilot.planning.costmodel import CostModel, analytic_layers


def model_config(spec: Any) -> dict[str, Any]:
    """The model's config.json as a dict: the known config of a GGUF-only model, else the folder's file."""
    from fedpilot.families.llama.known_configs import KNOWN_CONFIGS

    if spec.name in KNOWN_CONFIGS and (spec.weights_file or "").endswith(".gguf"):
        return dict(KNOWN_CONFIGS[spec.name])
    return json.loads((spec.path() / "config.json").read_text())


def head_dim(cfg: Mapping[str, Any]) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def attention_biases(cfg: Mapping[str, Any]) -> int:
    """Bias parameters of one layer's attention: Qwen2 has them on q, k and v; Llama and Mistral only with attention_bias."""
    shapes = target_shapes(cfg)
    if cfg.get("model_type") == "qwen2":
        return sum(shapes[t][1] for t in ("q_proj", "k_proj", "v_proj"))
    if cfg.get("attention_bias", False):
        return sum(shapes[t][1] for t in ("q_proj", "k_proj", "v_proj", "o_proj"))
    return 0


def target_shapes(cfg: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA target in a Llama decoder layer (GQA-aware)."""
    hidden, ffn, d = cfg["hidden_size"], cfg["intermediate_size"], head_dim(cfg)
    q = cfg["num_attention_heads"] * d
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * d
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, ffn),
        "up_proj": (hidden, ffn),
        "down_proj": (ffn, hidden),
    }


def analytic_cost_model(
    spec: Any, settings: Any, num_labels: int, batch: int, seq: int, optimizer: str, logit_positions: int = 1
) -> CostModel:
    """The cost model of ``settings`` (a ModelSettings: base_dropout, lora) on ``spec``'s model, from its config."""
    cfg = model_config(spec)
    hidden, ffn, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, lora = cfg["num_attention_heads"], settings.lora
    attn = heads * head_dim(cfg)
    shapes = target_shapes(cfg)
    tokens = batch * seq
    elem = {"float32": FLOAT, "bfloat16": 2}[getattr(settings, "dtype", "float32")]  # bytes of a frozen weight / activation

    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", True) else 2)
    per_layer_weights = sum(d_in * d_out for d_in, d_out in shapes.values()) + 2 * hidden + attention_biases(cfg)
    lora_params = layers * sum(lora.rank * (d_in + d_out) for d_in, d_out in (shapes[t] for t in lora.targets))
    weights = elem * (embeddings + layers * per_layer_weights + hidden) + FLOAT * lora_params
    forward_buffers = elem * tokens * (2 * ffn + 2 * hidden)
    answer_logits = FLOAT * 3 * batch * logit_positions * vocab
    fixed = weights + forward_buffers + answer_logits

    per_layer = FLOAT * tokens * 2 * hidden + elem * tokens * (4 * attn + 3 * ffn)
    if lora.dropout > 0:
        per_layer += tokens * sum(shapes[t][0] for t in lora.targets)
    if settings.base_dropout:
        per_layer += (1 + elem) * batch * heads * seq * seq
    # a set whose lowest module in its lowest layer sits later in the block stores less of that layer: from o_proj
    # the second RMSNorm input and the MLP, from gate/up the MLP's three I-wide tensors, from down_proj nothing
    # (each module's own input is its module term); LoRA dropout masks of the targets from that stage on
    masks = {t: (tokens * shapes[t][0] if lora.dropout > 0 else 0) for t in shapes}
    after = {0: per_layer, 1: FLOAT * tokens * hidden + elem * tokens * 3 * ffn, 2: elem * tokens * 3 * ffn, 3: 0}
    stage_of = spec.family.stages  # q/k/v 0, o_proj 1, gate/up 2, down_proj 3
    stored = {t: after[stage_of[t]] + (sum(masks[u] for u in lora.targets if stage_of[u] >= stage_of[t]) if stage_of[t] else 0)
              for t in lora.targets}
    settings_record = {"model": settings.name, "batch_size": batch, "seq_len": seq, "optimizer": optimizer,
                       "dtype": getattr(settings, "dtype", "float32")} | ({"logit_positions": logit_positions} if logit_positions != 1 else {})
    layer_input = elem * tokens * hidden  # what a checkpointed layer keeps: its input hidden state
    return analytic_layers(fixed, per_layer, layers, shapes, lora.targets, lora.rank, tokens, optimizer, settings_record, layer_input,
                           stages=stage_of, stored=stored)
