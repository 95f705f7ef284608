"""IG-score and spatial-temporal aggregation: the formulas in fedpilot/scoring.py and strategies/compensation.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpilot.config import Config
from fedpilot.data.split import SplitData
from fedpilot.planning.scoring import GlobalChange, ig_scores, shares
from fedpilot.runtime.client import Client
from fedpilot.runtime.lora import LoraModel
from fedpilot.runtime.messages import ScoreInstructions
from fedpilot.strategies import ClientUpdate
from fedpilot.strategies.compensation import TemporalCompensation

MODULES = ["0.q", "1.q"]
KEYS = {"0.q": ["0.q/A"], "1.q": ["1.q/A"], "head": ["head/w"]}


def test_ig_scores_are_shares_that_favour_informative_modules() -> None:
    scores = ig_scores({"0.q": 3.0, "1.q": 1.0}, {"0.q": 0.0, "1.q": 0.0}, MODULES, weight=0.5)
    assert scores == pytest.approx({"0.q": 0.5 * 0.75 + 0.25, "1.q": 0.5 * 0.25 + 0.25})
    assert sum(ig_scores({"0.q": 2.0}, {"0.q": 1.0, "1.q": 3.0}, MODULES, 0.3).values()) == pytest.approx(1.0)
    assert ig_scores({"0.q": 2.0}, {}, MODULES, weight=1.0) == {"0.q": 0.5, "1.q": 0.5}  # unscored: the mean
    assert shares({"a": 0.0, "b": 0.0}) == {"a": 0.5, "b": 0.5}


def test_global_change_is_the_relative_update_norm_smoothed_over_rounds() -> None:
    tracker = GlobalChange(KEYS, MODULES, decay=0.5)
    before = {"0.q/A": np.ones(4, dtype=np.float32), "1.q/A": np.ones(4, dtype=np.float32)}
    tracker.observe(before, {"0.q/A": np.ones(4, dtype=np.float32) * 1.5, "1.q/A": np.ones(4, dtype=np.float32)})
    assert tracker.change == pytest.approx({"0.q": 0.5, "1.q": 0.0})
    tracker.observe(before, before)
    assert tracker.change == pytest.approx({"0.q": 0.25, "1.q": 0.0})


def update(cid: int, n: int, tensors: dict[str, np.ndarray]) -> ClientUpdate:
    return ClientUpdate(cid, n, tensors)


def test_stagg_with_full_coverage_is_fedavg() -> None:
    stagg = TemporalCompensation(KEYS, MODULES, eta=0.5, beta=0.9, tau=3)
    start = {"0.q/A": np.zeros(3, dtype=np.float32), "1.q/A": np.zeros(3, dtype=np.float32), "head/w": np.zeros(2, dtype=np.float32)}
    a = {"0.q/A": np.ones(3, dtype=np.float32), "1.q/A": np.ones(3, dtype=np.float32) * 2, "head/w": np.ones(2, dtype=np.float32)}
    b = {"0.q/A": np.ones(3, dtype=np.float32) * 3, "1.q/A": np.zeros(3, dtype=np.float32), "head/w": np.zeros(2, dtype=np.float32)}
    result = stagg.aggregate(start, [update(0, 1, a), update(1, 3, b)])
    np.testing.assert_allclose(result["0.q/A"], np.full(3, 2.5, dtype=np.float32))
    np.testing.assert_allclose(result["1.q/A"], np.full(3, 0.5, dtype=np.float32))
    np.testing.assert_allclose(result["head/w"], np.full(2, 0.25, dtype=np.float32))


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_stagg_spatial_coverage_scales_a_module_step_by_the_rows_that_trained_it(eta: float) -> None:
    """spatial: coverage: theta <- theta + c D + w h, c the share of the round's rows that trained the key (numpy reference)."""
    beta, tau = 0.9, 3
    stagg = TemporalCompensation(KEYS, MODULES, eta=eta, beta=beta, tau=tau, spatial="coverage")
    start = {"0.q/A": np.zeros(3, dtype=np.float32), "1.q/A": np.full(3, 2.0, dtype=np.float32), "head/w": np.zeros(2, dtype=np.float32)}
    rich = {"0.q/A": np.array([1.0, 2.0, 3.0], dtype=np.float32), "1.q/A": np.array([4.0, 2.0, 0.0], dtype=np.float32), "head/w": np.ones(2, dtype=np.float32)}
    poor = {"0.q/A": np.array([3.0, 2.0, 1.0], dtype=np.float32), "head/w": np.full(2, 5.0, dtype=np.float32)}
    result = stagg.aggregate(start, [update(0, 1, rich), update(1, 3, poor)])
    # 0.q: both trained it (c = 1): the plain sample-weighted mean, whatever eta
    np.testing.assert_allclose(result["0.q/A"], (1 * rich["0.q/A"] + 3 * poor["0.q/A"]) / 4, rtol=1e-6)
    # 1.q: only the 1-row client of 4 rows trained it: c = 1/4 of its update, plus eta (1 - c) min(1, 1/tau) of the history (1 - beta) D
    delta = rich["1.q/A"].astype(np.float64) - start["1.q/A"]
    expected = start["1.q/A"] + 0.25 * delta + eta * 0.75 * (1 / tau) * (1 - beta) * delta
    np.testing.assert_allclose(result["1.q/A"], expected, rtol=1e-6)
    np.testing.assert_allclose(result["head/w"], np.full(2, 4.0), rtol=1e-6)  # the head: the plain mean, unscaled
    trainers = TemporalCompensation(KEYS, MODULES, eta=0.0, beta=beta, tau=tau).aggregate(start, [update(0, 1, rich), update(1, 3, poor)])
    np.testing.assert_allclose(trainers["1.q/A"], rich["1.q/A"], rtol=1e-6)  # the default: the trainers' mean, the whole update


def test_stagg_moves_untrained_modules_on_their_history_more_as_they_grow_stale() -> None:
    eta, beta, tau = 0.5, 0.9, 3
    stagg = TemporalCompensation(KEYS, MODULES, eta=eta, beta=beta, tau=tau)
    state = {"0.q/A": np.zeros(1, dtype=np.float32), "1.q/A": np.zeros(1, dtype=np.float32), "head/w": np.zeros(1, dtype=np.float32)}
    both = {"0.q/A": np.ones(1, dtype=np.float32), "1.q/A": np.ones(1, dtype=np.float32), "head/w": np.zeros(1, dtype=np.float32)}
    state = stagg.aggregate(state, [update(0, 1, both)])  # every module trained: history = (1 - beta) * 1
    history = 1 - beta
    assert float(state["1.q/A"][0]) == pytest.approx(1.0)
    steps = []
    for staleness in (1, 2, 3):  # only module 0.q trains; 1.q is stale
        only_zero = {"0.q/A": state["0.q/A"] + 1, "head/w": np.zeros(1, dtype=np.float32)}
        before = float(state["1.q/A"][0])
        state = stagg.aggregate(state, [update(0, 1, only_zero)])
        history *= beta
        weight = eta * (1 - 0.0) * min(1.0, (staleness + 1) / tau)
        steps.append(float(state["1.q/A"][0]) - before)
        assert steps[-1] == pytest.approx(weight * history, rel=1e-5)
    assert stagg.staleness == {"0.q": 0, "1.q": 3}


def test_stagg_compensation_shrinks_with_coverage() -> None:
    def one_round(trained_share: int) -> float:
        stagg = TemporalCompensation(KEYS, MODULES, eta=0.5, beta=0.5, tau=1)
        state = {"0.q/A": np.zeros(1, dtype=np.float32), "1.q/A": np.zeros(1, dtype=np.float32), "head/w": np.zeros(1, dtype=np.float32)}
        trained = {"0.q/A": np.ones(1, dtype=np.float32), "1.q/A": np.ones(1, dtype=np.float32), "head/w": np.zeros(1, dtype=np.float32)}
        untrained = {"0.q/A": np.ones(1, dtype=np.float32), "head/w": np.zeros(1, dtype=np.float32)}
        result = stagg.aggregate(state, [update(0, trained_share, trained), update(1, 4 - trained_share, untrained)])
        return float(result["1.q/A"][0]) - 1.0  # beyond the plain average (1.0)
    assert one_round(1) > one_round(3) > one_round(4) == 0.0


def test_stagg_dwa_weights_each_module_step_by_the_softmax_of_its_update_norm_ratio() -> None:
    """lambda_m = |R| exp(r_m / T) / sum_i exp(r_i / T), r_m = ||D_m(t-1)|| / ||D_m(t-2)||, against numpy by hand."""
    temperature = 0.5
    stagg = TemporalCompensation(KEYS, MODULES, eta=0.5, beta=0.9, tau=3, temperature=temperature)
    state = {"0.q/A": np.zeros(2, dtype=np.float32), "1.q/A": np.zeros(2, dtype=np.float32), "head/w": np.zeros(1, dtype=np.float32)}

    def step(d0: np.ndarray, d1: np.ndarray) -> dict[str, np.ndarray]:
        sent = {"0.q/A": state["0.q/A"] + d0, "1.q/A": state["1.q/A"] + d1, "head/w": state["head/w"]}
        return stagg.aggregate(state, [update(0, 1, sent)])  # full coverage: no history term, only lambda * D

    first = step(np.array([3.0, 4.0], dtype=np.float32), np.array([0.0, 2.0], dtype=np.float32))  # norms 5, 2
    np.testing.assert_allclose(first["0.q/A"], [3.0, 4.0])  # no ratio yet: lambda = 1
    state = first
    second = step(np.array([0.6, 0.8], dtype=np.float32), np.array([2.0, 0.0], dtype=np.float32))  # norms 1, 2
    np.testing.assert_allclose(second["0.q/A"] - first["0.q/A"], [0.6, 0.8], rtol=1e-6)  # one ratio needs two rounds behind
    state = second
    ratios = np.array([1.0 / 5.0, 2.0 / 2.0])
    expected = 2 * np.exp(ratios / temperature) / np.exp(ratios / temperature).sum()
    assert [stagg.dwa_weights()[m] for m in MODULES] == pytest.approx(expected)
    third = step(np.ones(2, dtype=np.float32), np.ones(2, dtype=np.float32))
    np.testing.assert_allclose(third["0.q/A"] - second["0.q/A"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(third["1.q/A"] - second["1.q/A"], expected[1], rtol=1e-5)
    assert expected[1] > 1 > expected[0]  # 1.q's updates did not shrink: the under-updated module takes the larger step

    restored = TemporalCompensation(KEYS, MODULES, eta=0.5, beta=0.9, tau=3, temperature=temperature)
    restored.load_state_dict(stagg.state_dict())
    assert restored.dwa_weights() == stagg.dwa_weights()
    older = {k: v for k, v in stagg.state_dict().items() if k != "update_norms"}  # a checkpoint from before DWA
    restored.load_state_dict(older)
    assert restored.dwa_weights() == {"0.q": 1.0, "1.q": 1.0}


def test_stagg_dwa_off_or_with_a_large_temperature_is_plain_stagg() -> None:
    rng = np.random.default_rng(0)
    plain, off = TemporalCompensation(KEYS, MODULES, 0.5, 0.9, 3), TemporalCompensation(KEYS, MODULES, 0.5, 0.9, 3, temperature=1e9)
    state_a = state_b = {k: np.zeros(3, dtype=np.float32) for k in ["0.q/A", "1.q/A", "head/w"]}
    for round_ in range(5):
        keys = ["0.q/A", "1.q/A", "head/w"] if round_ % 2 else ["0.q/A", "head/w"]  # 1.q sits out every other round
        deltas = [{k: rng.standard_normal(3).astype(np.float32) for k in keys} for _ in range(2)]
        state_a = plain.aggregate(state_a, [update(i, i + 1, {k: state_a[k] + d[k] for k in d}) for i, d in enumerate(deltas)])
        state_b = off.aggregate(state_b, [update(i, i + 1, {k: state_b[k] + d[k] for k in d}) for i, d in enumerate(deltas)])
        for k in state_a:
            np.testing.assert_allclose(state_b[k], state_a[k], rtol=1e-6, atol=1e-7)


def test_fedpilot_options_refuse_an_option_of_the_other_stagg() -> None:
    from pydantic import ValidationError

    from fedpilot.strategies.fedpilot import FedPilotOptions

    with pytest.raises(ValidationError, match="dwa_temperature weights stagg momentum"):
        FedPilotOptions(stagg="memory", dwa_temperature=2.0)
    with pytest.raises(ValidationError, match="spatial sets stagg momentum"):
        FedPilotOptions(stagg="memory", spatial="coverage")
    with pytest.raises(ValidationError, match="memory_horizon belongs to stagg: memory"):
        FedPilotOptions(memory_horizon=3)
    assert FedPilotOptions(dwa_temperature=2.0).dwa_temperature == 2.0


def test_client_scores_are_mean_squared_gradients(shared_model: LoraModel, tiny_data: SplitData, tiny_config: Config) -> None:
    client = Client(0, shared_model, tiny_data.train)
    rng = np.random.default_rng(0)
    state = {k: v + 0.01 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in shared_model.state().items()}
    scores, _ = client.score(["4.query", "5.value"], state, ScoreInstructions(batches=2, batch_size=8, seed=0))
    again, _ = client.score(["4.query", "5.value"], state, ScoreInstructions(batches=2, batch_size=8, seed=0))
    assert set(scores) == {"4.query", "5.value"} and all(v > 0 for v in scores.values())
    assert scores == again
    assert all(p.grad is None for p in shared_model.params.values())


def test_client_scores_the_logit_adjusted_loss_when_asked(shared_model: LoraModel, tiny_data: SplitData) -> None:
    """ScoreInstructions.logit_adjustment: the squared gradients are those of the loss the client trains on
    (logits + tau log of its label prior), recomputed here batch by batch without folding."""
    from fedpilot.runtime.training import batch_indices, batch_loss, label_offset

    client = Client(0, shared_model, tiny_data.train)
    rng = np.random.default_rng(1)
    state = {k: v + 0.01 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in shared_model.state().items()}
    modules = ["4.query", "5.value"]
    adjusted, _ = client.score(modules, state, ScoreInstructions(batches=2, batch_size=8, seed=0, logit_adjustment=1.0))
    plain, _ = client.score(modules, state, ScoreInstructions(batches=2, batch_size=8, seed=0))
    offset = label_offset(tiny_data.train.labels, shared_model.num_labels, 1.0)
    shared_model.load_state(state)
    shared_model.set_trainable(modules)
    shared_model.peft.eval()
    squared = dict.fromkeys(modules, 0.0)
    batches = list(batch_indices(len(tiny_data.train), 8, 2, torch.Generator().manual_seed(0)))
    for idx in batches:
        for param in shared_model.params.values():
            param.grad = None
        batch_loss(shared_model, tiny_data.train, idx, offset=offset).backward()
        for m in modules:
            squared[m] += sum(float((shared_model.params[k].grad.double() ** 2).sum()) for k in shared_model.module_keys[m])
    shared_model.set_trainable([])
    for m in modules:
        size = sum(shared_model.params[k].numel() for k in shared_model.module_keys[m])
        assert adjusted[m] == pytest.approx(squared[m] / (size * len(batches)), rel=1e-4)
        assert adjusted[m] != pytest.approx(plain[m], rel=1e-3)


def test_fedpilot_score_loss_option_sets_what_the_server_asks() -> None:
    """`score_loss: trained` sends train.logit_adjustment with every score task; the default sends 0."""
    from fedpilot.config import TrainSettings
    from fedpilot.runtime.server import Server
    from fedpilot.strategies import STRATEGIES, ClientInfo
    from tests.test_flower_planning import BUDGET, EchoTransport, context, global_tensors

    sent = []

    class Recording(EchoTransport):
        def score(self, server_round, tasks):
            sent.extend(tasks)
            return super().score(server_round, tasks)

    for options, expected in (({}, 0.0), ({"score_loss": "trained"}, 0.7)):
        sent.clear()
        ctx = context()
        strategy = STRATEGIES["fedpilot"](ctx, STRATEGIES["fedpilot"].Options(**options))
        clients = [ClientInfo(cid, 10, BUDGET) for cid in range(3)]
        server = Server(strategy, clients, global_tensors(ctx), TrainSettings(logit_adjustment=0.7), seed=0)
        server.check_budgets()
        server.run_round(1, Recording(ctx))
        assert sent and {t.instructions.logit_adjustment for t in sent} == {expected}
