"""train.logit_adjustment: each client trains on logits + tau log(its label prior) (Menon et al. 2021;
FedLC): exact against numpy, and it keeps a one-class client from pulling the head to its class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpilot.config import Config, parse_config
from fedpilot.data.split import SplitData
from fedpilot.runtime.client import Client
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import TrainInstructions
from fedpilot.runtime.training import batch_loss, label_offset
from fedpilot.strategies import Assignment


def test_the_offset_is_tau_log_the_smoothed_prior() -> None:
    labels = torch.tensor([0, 0, 0, 2, 2, 0])
    expected = 0.7 * np.log((np.array([4, 0, 2]) + 1) / (6 + 3))
    np.testing.assert_allclose(label_offset(labels, 3, 0.7).numpy(), expected, rtol=1e-6)
    assert label_offset(labels, 3, 0.0) is None
    with pytest.raises(ValueError, match="labels go up to 2, the model has 2 labels"):
        label_offset(labels, 2, 1.0)


def test_the_adjusted_loss_is_cross_entropy_of_the_shifted_logits(shared_model: LoraModel, tiny_data: SplitData) -> None:
    rows = torch.arange(8)
    offset = torch.tensor([0.5, -1.0, 0.0, 2.0, -0.3])
    shared_model.peft.eval()  # dropout off: the three losses below are of one deterministic forward
    with torch.no_grad():
        features, labels = tiny_data.train.batch(rows, shared_model.device)
        logits = shared_model.forward(features).double().numpy() + offset.double().numpy()
        ours = batch_loss(shared_model, tiny_data.train, rows, offset=offset).item()
        plain = batch_loss(shared_model, tiny_data.train, rows).item()
        zero = batch_loss(shared_model, tiny_data.train, rows, offset=torch.zeros(5)).item()
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    expected = -log_softmax[np.arange(8), labels.numpy()].mean()
    assert ours == pytest.approx(expected, rel=1e-5)
    assert zero == pytest.approx(plain, rel=1e-6) and ours != pytest.approx(plain, rel=1e-3)


@pytest.mark.parametrize(("optimizer", "lr", "most"), [("sgd", 0.05, 0.25), ("adamw", 2e-3, 0.8)])
def test_a_skewed_client_pulls_the_head_less_with_the_adjustment(
    shared_model: LoraModel, tiny_data: SplitData, tiny_config: Config, optimizer: str, lr: float, most: float
) -> None:
    """Trained on a shard mostly of one class (the tiny split's 44 rows of it and 8 others), the plain loss teaches the head that class's prior; the
    adjusted loss already carries the prior in its offset, so the plain logits afterwards favour that class
    less: by 7x under SGD, under AdamW by only about 1.7x (Adam's steps hardly depend on the gradient's size,
    and the offset mostly shrinks it; measured: pull 0.34 plain, 0.19 adjusted). A one-class shard would not
    show it under AdamW at all: every gradient then points the same way."""
    labels = tiny_data.train.labels.numpy()
    majority = int(np.bincount(labels).argmax())
    rows = np.concatenate([np.flatnonzero(labels == majority)[:56], np.flatnonzero(labels != majority)[:8]])
    shard = tiny_data.train.subset(rows)
    others = tiny_data.test.subset(np.flatnonzero(tiny_data.test.labels.numpy() != majority)[:32])
    start = shared_model.state()

    def majority_log_prob() -> float:
        """The mean log-probability the plain logits give the shard's class on examples of other classes."""
        shared_model.peft.eval()  # no dropout: the same examples score the same
        with torch.no_grad():
            features, _ = others.batch(slice(None), shared_model.device)
            return float(shared_model.forward(features).log_softmax(-1)[:, majority].mean())

    before, gain = majority_log_prob(), {}
    for tau in (0.0, 1.0):
        settings = tiny_config.train.model_copy(update={"logit_adjustment": tau, "local_steps": 8, "optimizer": optimizer, "lr": lr})
        Client(0, shared_model, shard).train(Assignment(("5.query",)), start, TrainInstructions.from_settings(settings, seed=1))
        gain[tau] = majority_log_prob() - before
        shared_model.load_state(start)
    assert gain[0.0] > 0.2  # the plain loss pulls every prediction toward the shard's class
    assert gain[1.0] < most * gain[0.0], gain


def test_the_setting_reaches_the_client_and_is_checked() -> None:
    config = parse_config({"train": {"logit_adjustment": 0.5}})
    assert TrainInstructions.from_settings(config.train, seed=0).logit_adjustment == 0.5
    assert TrainInstructions.from_settings(parse_config({}).train, seed=0).logit_adjustment == 0.0
