"""The cost model estimated from the model's config alone: no weights loaded, no forward pass.

The sizes come from the config of whichever model type the family covers (BERT, RoBERTa, XLM-RoBERTa,
DistilBERT, DeBERTa-v2); what differs between them is the embeddings, whether the pooler is frozen
(BERT) or part of the trained head (the others add a hidden x hidden dense layer), and DeBERTa-v2's
relative-position attention (for each of c2p and p2c, per layer: a B·A·T·T int64 gather index and the
position keys or queries repeated per batch row and head, B·A·2k·D). Its forward pass also holds the scores
against the 2k relative positions (B·A·T·2k) for a moment; the peak of a step that trains little can be that
forward moment rather than backward: that is the model's ``floor`` (weights, the head's state, the forward
buffers and those two tensors per term), below which no step is priced.

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
- with activation checkpointing: activation[l] = (L - l) · 4·B·T·H (each block's input) + one block's
  recompute (per_layer and its modules' saved inputs); module[m] = its parameters with gradient and
  optimiser state.
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


def geometry(cfg: dict[str, Any]) -> dict[str, int]:
    """The sizes the cost model needs, read from a config.json of any model type the family covers
    (DistilBERT names them dim, hidden_dim, n_layers, n_heads)."""
    hidden = cfg.get("hidden_size", cfg.get("dim"))
    return {
        "hidden": int(hidden),
        "ffn": int(cfg.get("intermediate_size", cfg.get("hidden_dim"))),
        "layers": int(cfg.get("num_hidden_layers", cfg.get("n_layers"))),
        "heads": int(cfg.get("num_attention_heads", cfg.get("n_heads"))),
    }


def base_weights(cfg: dict[str, Any], hidden: int) -> tuple[int, int]:
    """(embedding parameters, extra parameters per layer) of the frozen base outside its LoRA targets'
    own shapes, by model type: BERT and RoBERTa add token type embeddings, DeBERTa-v2 its relative position
    embeddings and, without shared attention keys, a position key and query projection per layer."""
    model_type = cfg.get("model_type", "bert")
    vocab, positions = cfg["vocab_size"], cfg.get("max_position_embeddings", 512)
    if model_type == "distilbert":
        return (vocab + positions + 2) * hidden, 0
    if model_type != "deberta-v2":
        return (vocab + positions + cfg.get("type_vocab_size", 2) + 2) * hidden, 0
    embeddings = vocab + (positions if cfg.get("position_biased_input", True) else 0) + cfg.get("type_vocab_size", 0) + 2
    per_layer = 0
    if cfg.get("relative_attention", False):
        embeddings += 2 * relative_span(cfg) + (2 if "layer_norm" in cfg.get("norm_rel_ebd", "none") else 0)
        if not cfg.get("share_att_key", False):
            per_layer = 2 * (hidden * hidden + hidden) * len(relative_terms(cfg))
    return embeddings * hidden, per_layer


def relative_span(cfg: dict[str, Any]) -> int:
    """DeBERTa-v2's attention span k (relative positions -k..k): position_buckets, else max_relative_positions, else max_position_embeddings."""
    for key in ("position_buckets", "max_relative_positions"):
        if cfg.get(key, -1) > 0:
            return int(cfg[key])
    return int(cfg.get("max_position_embeddings", 512))


def relative_terms(cfg: dict[str, Any]) -> list[str]:
    """DeBERTa-v2's disentangled attention terms (c2p, p2c), each adding a score tensor per layer; [] without relative attention."""
    if cfg.get("model_type") != "deberta-v2" or not cfg.get("relative_attention", False):
        return []
    kinds = cfg.get("pos_att_type") or []
    return [kind for kind in (kinds.split("|") if isinstance(kinds, str) else kinds) if kind in ("c2p", "p2c")]


def head_parameters(cfg: dict[str, Any], hidden: int, num_labels: int) -> tuple[int, int]:
    """(frozen pooler parameters, trained head parameters): BERT's pooler is frozen and its head one linear
    layer; RoBERTa, DistilBERT and DeBERTa-v2 train a hidden x hidden dense layer before it and have no frozen pooler."""
    classifier = hidden * num_labels + num_labels
    if cfg.get("model_type", "bert") == "bert":
        return hidden * hidden + hidden, classifier
    return 0, hidden * hidden + hidden + classifier


def analytic_cost_model(spec: Any, settings: Any, num_labels: int, batch: int, seq: int, optimizer: str) -> CostModel:
    """The cost model of ``settings`` (a ModelSettings: base_dropout, lora) on ``spec``'s model, from its config.json."""
    cfg = json.loads((spec.path() / "config.json").read_text())
    sizes = geometry(cfg)
    hidden, ffn, layers, heads = sizes["hidden"], sizes["ffn"], sizes["layers"], sizes["heads"]
    lora = settings.lora
    shapes = target_shapes(hidden, ffn)
    tokens = batch * seq

    embeddings, extra_per_layer = base_weights(cfg, hidden)
    per_layer_weights = 4 * (hidden * hidden + hidden) + 2 * hidden * ffn + ffn + hidden + 4 * hidden + extra_per_layer
    pooler, head = head_parameters(cfg, hidden, num_labels)
    lora_params = layers * sum(lora.rank * (d_in + d_out) for d_in, d_out in (shapes[t] for t in lora.targets))
    weights = FLOAT * (embeddings + layers * per_layer_weights + pooler + 2 * head + lora_params)
    head_training = FLOAT * head * (1 + OPTIMIZER_STATES[optimizer])
    forward_buffers = FLOAT * tokens * (2 * ffn + 3 * hidden)
    terms = len(relative_terms(cfg))
    # DeBERTa's forward holds each term's scores against the 2k relative positions and its int64 gather index
    # for a moment: a floor the step cannot go below (CostModel.floor)
    floor = weights + head_training + forward_buffers + terms * (
        FLOAT * batch * heads * seq * 2 * relative_span(cfg) + 8 * batch * heads * seq * seq) if terms else 0
    fixed = weights + head_training + forward_buffers

    per_layer = FLOAT * tokens * (6 * hidden + ffn)
    # each disentangled term keeps its gather index (int64, B·A·T·T) and its position keys or queries repeated per
    # batch row and head (B·A·2k·D) for backward
    per_layer += terms * (8 * batch * heads * seq * seq + FLOAT * batch * heads * 2 * relative_span(cfg) * (hidden // heads))
    if lora.dropout > 0:
        per_layer += tokens * sum(shapes[t][0] for t in lora.targets)
    if settings.base_dropout > 0:
        per_layer += 2 * tokens * hidden + 3 * FLOAT * batch * heads * seq * seq
    settings_record = {"model": settings.name, "batch_size": batch, "seq_len": seq, "optimizer": optimizer}
    layer_input = FLOAT * tokens * hidden  # what a checkpointed layer keeps: its input hidden state
    # a set whose lowest module in its lowest layer sits later in the block stores less of that layer (each module's
    # own input is its module term): from attn_out the two LayerNorm inputs and the GELU input, from ffn_in the
    # output LayerNorm input and the GELU input, from ffn_out the output LayerNorm input; DeBERTa's value (a stage of
    # its own there) the same as attn_out plus the attention probabilities it multiplies, without the position terms
    masks = {t: (tokens * shapes[t][0] if lora.dropout > 0 else 0) for t in shapes}
    after = {"query": per_layer, "key": per_layer, "value": per_layer, "attn_out": FLOAT * tokens * (2 * hidden + ffn),
             "ffn_in": FLOAT * tokens * (hidden + ffn), "ffn_out": FLOAT * tokens * hidden}
    stages = spec.family.stages
    if stages.get("value", 0) > stages.get("query", 0):
        after["value"] = after["attn_out"] + FLOAT * batch * heads * seq * seq
    stored = {t: after[t] + (sum(masks[u] for u in lora.targets if stages.get(u, 0) >= stages.get(t, 0)) if stages.get(t, 0) else 0)
              for t in lora.targets}
    return analytic_layers(fixed, per_layer, layers, shapes, lora.targets, lora.rank, tokens, optimizer, settings_record, layer_input,
                           stages=stages, stored=stored, floor=floor)
