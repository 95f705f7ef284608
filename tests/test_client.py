"""A client step on the real model: only assigned modules (and the head) train; frozen ones are untouched."""

from __future__ import annotations

import numpy as np

from fedpilot.config import Config
from fedpilot.core.keys import module_of
from fedpilot.data.split import SplitData
from fedpilot.runtime.client import Client
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.strategies import Assignment


def test_every_target_gets_a_module_per_layer(tiny_config: Config) -> None:
    settings = tiny_config.model.model_copy(
        update={"lora": tiny_config.model.lora.model_copy(update={"targets": ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")})}
    )
    model = LoraModel(settings, num_labels=5, seed=0)
    assert len(model.modules) == 6 * 6 and "3.attn_out" in model.modules and "5.ffn_out" in model.modules
    assert all(len(model.module_keys[m]) == 2 for m in model.modules)
    assert model.head_keys == ["head/classifier.weight", "head/classifier.bias"]


def test_frozen_module_gets_no_gradient_and_keeps_its_weights(shared_model: LoraModel, tiny_data: SplitData, tiny_config: Config) -> None:
    rng = np.random.default_rng(0)
    global_tensors = {k: v + 0.01 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in shared_model.state().items()}
    client = Client(0, shared_model, tiny_data.train)
    instructions = TrainInstructions.from_settings(tiny_config.train, seed=3)

    trained, metrics = client.train(Assignment(("4.query", "5.value")), global_tensors, instructions)

    assert {module_of(k) for k in trained} == {"4.query", "5.value", "head"}
    after = shared_model.state()
    for key in shared_model.params:
        if module_of(key) in ("4.query", "5.value", "head"):
            assert not np.array_equal(after[key], global_tensors[key]), key
        else:
            assert np.array_equal(after[key], global_tensors[key]), key
    assert metrics["steps"] == tiny_config.train.local_steps
    assert metrics["upload_bytes"] == sum(t.size * 4 for t in trained.values())
