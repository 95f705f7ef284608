"""``federation.payload: assigned``: a task carries only the assigned modules' tensors and the head, and the
client runs every other LoRA module as the base model. (That both drivers then agree, bit for bit and byte
for byte, is checked by the Flower dropout rehearsal in test_flower.py, which runs with ``payload: assigned``;
the server side's payloads and byte records by tests/test_flower_planning.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpilot.core.keys import HEAD, module_of
from fedpilot.runtime.client import Client


def randomised(model) -> dict[str, np.ndarray]:
    """The model's adapter with every tensor random (LoRA B included), so every module changes the output."""
    rng = np.random.default_rng(1)
    return {k: (0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in model.state().items()}


def logits(model, data) -> torch.Tensor:
    """The model's output on the first 8 rows, dropout off."""
    model.peft.eval()
    features, _ = data.batch(slice(0, 8), model.device)
    with torch.no_grad():
        return model.forward(features)


def test_modules_left_out_of_an_assigned_payload_contribute_nothing(shared_model, tiny_data) -> None:
    model, data = shared_model, tiny_data.train
    client = Client(0, model, data)
    adapter = randomised(model)
    assigned = [m for m in model.modules if m.startswith("5.")]
    payload = {k: v for k, v in adapter.items() if module_of(k) in {*assigned, HEAD}}

    client.receive(adapter)  # a full payload first: the model holds nonzero tensors everywhere
    full_out = logits(model, data)
    client.receive(payload, payload="assigned")
    for key, value in model.state().items():
        if module_of(key) in assigned or module_of(key) == HEAD:
            assert np.array_equal(value, adapter[key]), key
        else:
            assert not value.any(), f"{key} should be zero: its module was not sent"
    partial_out = logits(model, data)
    zeroed = {k: (v if module_of(k) in {*assigned, HEAD} else np.zeros_like(v)) for k, v in adapter.items()}
    client.receive(zeroed)
    assert torch.equal(partial_out, logits(model, data)), "a module not sent must act as if its LoRA were zero"
    assert not torch.equal(partial_out, full_out), "the left-out modules did change the output before"


def test_a_client_refuses_a_payload_that_does_not_match_its_mode(shared_model, tiny_data) -> None:
    client = Client(3, shared_model, tiny_data.train)
    adapter = randomised(shared_model)
    no_head = {k: v for k, v in adapter.items() if module_of(k) == "5.query"}
    with pytest.raises(ValueError, match="client 3: the payload lacks"):
        client.receive(no_head)  # payload: full refuses anything incomplete
    with pytest.raises(ValueError, match="must carry the head"):
        client.receive(no_head, payload="assigned")
    half = {k: v for k, v in adapter.items() if module_of(k) == HEAD or k == "5.query/lora_A"}
    with pytest.raises(ValueError, match="carries part of module '5.query' but lacks '5.query/lora_B'"):
        client.receive(half, payload="assigned")
    with pytest.raises(ValueError, match="holds tensors this model lacks"):
        client.receive({**adapter, "9.nothing/lora_A": adapter["5.query/lora_A"]}, payload="assigned")
    with pytest.raises(ValueError, match="unknown payload 'some'"):
        client.receive(adapter, payload="some")
