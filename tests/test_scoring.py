"""IG-score and spatial-temporal aggregation: the formulas in fedpilot/scoring.py and strategy_utils.py."""

from __future__ import annotations

import pytest
import torch

from fedpilot.client import Client, ScoreInstructions
from fedpilot.config import Config
from fedpilot.data import SplitData
from fedpilot.models import LoraModel
from fedpilot.scoring import GlobalChange, ig_scores, shares
from fedpilot.strategies import ClientUpdate
from fedpilot.strategies.strategy_utils import TemporalCompensation

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
    before = {"0.q/A": torch.ones(4), "1.q/A": torch.ones(4)}
    tracker.observe(before, {"0.q/A": torch.ones(4) * 1.5, "1.q/A": torch.ones(4)})
    assert tracker.change == pytest.approx({"0.q": 0.5, "1.q": 0.0})
    tracker.observe(before, before)
    assert tracker.change == pytest.approx({"0.q": 0.25, "1.q": 0.0})


def update(cid: int, n: int, tensors: dict[str, torch.Tensor]) -> ClientUpdate:
    return ClientUpdate(cid, n, tensors)


def test_stagg_with_full_coverage_is_fedavg() -> None:
    stagg = TemporalCompensation(KEYS, MODULES, eta=0.5, beta=0.9, tau=3)
    start = {"0.q/A": torch.zeros(3), "1.q/A": torch.zeros(3), "head/w": torch.zeros(2)}
    a = {"0.q/A": torch.ones(3), "1.q/A": torch.ones(3) * 2, "head/w": torch.ones(2)}
    b = {"0.q/A": torch.ones(3) * 3, "1.q/A": torch.zeros(3), "head/w": torch.zeros(2)}
    result = stagg.aggregate(start, [update(0, 1, a), update(1, 3, b)])
    torch.testing.assert_close(result["0.q/A"], torch.full((3,), 2.5))
    torch.testing.assert_close(result["1.q/A"], torch.full((3,), 0.5))
    torch.testing.assert_close(result["head/w"], torch.full((2,), 0.25))


def test_stagg_moves_untrained_modules_on_their_history_more_as_they_grow_stale() -> None:
    eta, beta, tau = 0.5, 0.9, 3
    stagg = TemporalCompensation(KEYS, MODULES, eta=eta, beta=beta, tau=tau)
    state = {"0.q/A": torch.zeros(1), "1.q/A": torch.zeros(1), "head/w": torch.zeros(1)}
    both = {"0.q/A": torch.ones(1), "1.q/A": torch.ones(1), "head/w": torch.zeros(1)}
    state = stagg.aggregate(state, [update(0, 1, both)])  # every module trained: history = (1 - beta) * 1
    history = 1 - beta
    assert float(state["1.q/A"]) == pytest.approx(1.0)
    steps = []
    for staleness in (1, 2, 3):  # only module 0.q trains; 1.q is stale
        only_zero = {"0.q/A": state["0.q/A"] + 1, "head/w": torch.zeros(1)}
        before = float(state["1.q/A"])
        state = stagg.aggregate(state, [update(0, 1, only_zero)])
        history *= beta
        weight = eta * (1 - 0.0) * min(1.0, (staleness + 1) / tau)
        steps.append(float(state["1.q/A"]) - before)
        assert steps[-1] == pytest.approx(weight * history, rel=1e-5)
    assert stagg.staleness == {"0.q": 0, "1.q": 3}


def test_stagg_compensation_shrinks_with_coverage() -> None:
    def one_round(trained_share: int) -> float:
        stagg = TemporalCompensation(KEYS, MODULES, eta=0.5, beta=0.5, tau=1)
        state = {"0.q/A": torch.zeros(1), "1.q/A": torch.zeros(1), "head/w": torch.zeros(1)}
        trained = {"0.q/A": torch.ones(1), "1.q/A": torch.ones(1), "head/w": torch.zeros(1)}
        untrained = {"0.q/A": torch.ones(1), "head/w": torch.zeros(1)}
        result = stagg.aggregate(state, [update(0, trained_share, trained), update(1, 4 - trained_share, untrained)])
        return float(result["1.q/A"]) - 1.0  # beyond the plain average (1.0)
    assert one_round(1) > one_round(3) > one_round(4) == 0.0


def test_client_scores_are_mean_squared_gradients(shared_model: LoraModel, tiny_data: SplitData, tiny_config: Config) -> None:
    client = Client(0, shared_model, tiny_data.train)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in shared_model.state().items()}
    scores, _ = client.score(["4.query", "5.value"], state, ScoreInstructions(batches=2, batch_size=8, seed=0))
    again, _ = client.score(["4.query", "5.value"], state, ScoreInstructions(batches=2, batch_size=8, seed=0))
    assert set(scores) == {"4.query", "5.value"} and all(v > 0 for v in scores.values())
    assert scores == again
    assert all(p.grad is None for p in shared_model.params.values())
