"""config.json of models whose package ships only a GGUF file, so that the analytic cost model needs
neither the package nor a conversion. Checked against the converted model by tests/test_llama_family.py."""

from __future__ import annotations

from typing import Any

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
    },
}
