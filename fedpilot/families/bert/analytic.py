"""The cost model estimated from the model's config alone: no weights loaded, no forward pass.

For planning on a machine that has never run the model. Terms, in float32 bytes, for batch B,
sequence T, hidden H, FFN width I, A attention heads, L layers, LoRA rank r:

- fixed = every weight (base, all LoRA matrices, the head twice: PEFT keeps the original)
  + the head's gradient and optimiser state + the forward pass's largest live buffers,
  4·B·T·(2I + 3H) (the FFN's pre- and post-activation tensors and the attention's q, k, v).
- activation[l] = (L - l) · per_layer, where per_layer is what one frozen layer saves so the
  gradient can cross it: 4·B·T·(6H + I) (attention q, k, v and output, two LayerNorm inputs,
  the GELU input), plus one byte per input element for each LoRA dropout mask on the path, plus,
  with dropout inside the base model, two hidden-state masks and three A·T·T attention tensors.
- module[m] = its parameters with gradient and optimiser state, 4·P·(2 + states), plus the inputs
  it saves itself: the dropped-out input 4·B·T·d_in and the rank-r projection 4·B·T·r.
"""

from __future__ import annotations

import json
from typing import Any

from fedpilot.planning.costmodel import FLOAT_BYTES as FLOAT
from fedpilot.planning.costmodel import OPTIMIZER_STATES, CostModel, analytic_layers


def target_shapes(hidden: int, ffn: int) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA target in a BERT layer."""
    return {
        "query": (hidden, hidden),
        "key": (hidden, hidden),
        "value": (hidden, hidden),
        "attn_out": (hidden, hidden),
        "ffn_in": (hidden, ffn),
        "ffn_out": (ffn, hidden),
    }


def analytic_cost_model(spec: Any, settings: Any, num_labels: int, batch: int, seq: int, optimizer: str) -> CostModel:
    """The cost model of ``settings`` (a ModelSettings: base_dropout, lora) on ``spec``'s model, from its config.json."""
    cfg = json.loads((spec.path() / "config.json").read_text())
    hidden, ffn, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, lora = cfg["num_attention_heads"], settings.lora
    shapes = target_shapes(hidden, ffn)
    tokens = batch * seq

    embeddings = (cfg["vocab_size"] + cfg["max_position_embeddings"] + cfg["type_vocab_size"] + 2) * hidden
    per_layer_weights = 4 * (hidden * hidden + hidden) + 2 * hidden * ffn + ffn + hidden + 4 * hidden
    pooler = hidden * hidden + hidden
    head = hidden * num_labels + num_labels
    lora_params = layers * sum(lora.rank * (d_in + d_out) for d_in, d_out in (shapes[t] for t in lora.targets))
    weights = FLOAT * (embeddings + layers * per_layer_weights + pooler + 2 * head + lora_params)
    head_training = FLOAT * head * (1 + OPTIMIZER_STATES[optimizer])
    forward_buffers = FLOAT * tokens * (2 * ffn + 3 * hidden)
    fixed = weights + head_training + forward_buffers

    per_layer = FLOAT * tokens * (6 * hidden + ffn)
    if lora.dropout > 0:
        per_layer += tokens * sum(shapes[t][0] for t in lora.targets)
    if settings.base_dropout > 0:
        per_layer += 2 * tokens * hidden + 3 * FLOAT * batch * heads * seq * seq
    settings_record = {"model": settings.name, "batch_size": batch, "seq_len": seq, "optimizer": optimizer}
    return analytic_layers(fixed, per_layer, layers, shapes, lora.targets, lora.rank, tokens, optimizer, settings_record)
