"""The server learning rate (federation.server_lr): the global state moves that share of the way to
each aggregate, tensor by tensor, and exactly in effective weight where the state merges into the base."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpilot.config import Config
from fedpilot.core.keys import BASE_DELTA, HEAD, LORA_A, LORA_B, tensor_key
from fedpilot.federation import build_federation
from fedpilot.runtime.server import Server
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.server_step import module_changes, server_step

MODULES = ("0.query", "1.value")
RANK, D_OUT, D_IN = 3, 5, 4


def state(seed: int, base_deltas: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {f"{HEAD}/w": rng.standard_normal((2, D_OUT)).astype(np.float32)}
    for m in MODULES:
        out[tensor_key(m, LORA_A)] = rng.standard_normal((RANK, D_IN)).astype(np.float32)
        out[tensor_key(m, LORA_B)] = rng.standard_normal((D_OUT, RANK)).astype(np.float32)
        if base_deltas:
            out[tensor_key(m, BASE_DELTA)] = rng.standard_normal((D_OUT, D_IN)).astype(np.float32)
    return out


def effective(s: dict[str, np.ndarray], module: str, scaling: float) -> np.ndarray:
    a, b, d = (s[tensor_key(module, p)].astype(np.float64) for p in (LORA_A, LORA_B, BASE_DELTA))
    return d + scaling * b @ a


def test_a_full_step_takes_the_aggregate_as_it_is() -> None:
    old, new = state(0, True), state(1, True)
    result = server_step(old, new, 1.0, MODULES, 2.0, base_deltas=True)
    assert all(np.array_equal(result[k], new[k]) for k in new)


@given(lr=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_every_tensor_moves_lr_of_the_way(lr: float, seed: int) -> None:
    old, new = state(seed, False), state(seed + 1, False)
    result = server_step(old, new, lr, MODULES, 2.0, base_deltas=False)
    for key in old:
        expected = old[key].astype(np.float64) + lr * (new[key].astype(np.float64) - old[key].astype(np.float64))
        np.testing.assert_array_equal(result[key], expected.astype(np.float32))
        assert result[key].dtype == np.float32


@given(lr=st.floats(0.01, 0.99), seed=st.integers(0, 1000), scaling=st.floats(0.1, 4.0))
@settings(max_examples=25, deadline=None)
def test_a_merging_state_moves_exactly_lr_of_the_way_in_effective_weight(lr: float, seed: int, scaling: float) -> None:
    old, new = state(seed, True), state(seed + 1, True)
    result = server_step(old, new, lr, MODULES, scaling, base_deltas=True)
    for m in MODULES:
        target = effective(old, m, scaling) + lr * (effective(new, m, scaling) - effective(old, m, scaling))
        np.testing.assert_allclose(effective(result, m, scaling), target, rtol=1e-5, atol=1e-5)
        for part in (LORA_A, LORA_B):  # the factors themselves are interpolated
            key = tensor_key(m, part)
            np.testing.assert_allclose(result[key], old[key] + lr * (new[key] - old[key]), rtol=1e-6, atol=1e-6)
    # interpolating D too, without the correction, would miss the target: the correction is not a no-op
    naive = {k: old[k] + lr * (new[k] - old[k]) for k in old}
    assert not np.allclose(effective(naive, MODULES[0], scaling), effective(result, MODULES[0], scaling), atol=1e-4)


def test_a_flora_style_reset_keeps_the_merged_weight_exact() -> None:
    """FLoRA merges the round into D and restarts A (random) and B (zero): half a step is half the merged change."""
    old, new = state(0, True), state(1, True)
    for m in MODULES:
        new[tensor_key(m, LORA_B)] = np.zeros_like(new[tensor_key(m, LORA_B)])
    result = server_step(old, new, 0.5, MODULES, 1.0, base_deltas=True)
    for m in MODULES:
        np.testing.assert_allclose(effective(result, m, 1.0), 0.5 * (effective(old, m, 1.0) + effective(new, m, 1.0)), atol=1e-5)


@pytest.mark.parametrize("base_deltas", [False, True])
def test_module_changes_are_the_frobenius_norms_of_the_effective_weight_changes(base_deltas: bool) -> None:
    old, new = state(0, base_deltas), state(1, base_deltas)
    new[tensor_key("1.value", LORA_A)] = old[tensor_key("1.value", LORA_A)]  # only B moves: still a change
    got = module_changes(old, new, MODULES, 2.0, base_deltas)
    for m in MODULES:
        a0, b0, a1, b1 = (s_[tensor_key(m, p)].astype(np.float64) for s_ in (old, new) for p in (LORA_A, LORA_B))
        expected = 2.0 * (b1 @ a1 - b0 @ a0)
        if base_deltas:
            expected += new[tensor_key(m, BASE_DELTA)].astype(np.float64) - old[tensor_key(m, BASE_DELTA)]
        after = 2.0 * b1 @ a1 + (new[tensor_key(m, BASE_DELTA)].astype(np.float64) if base_deltas else 0)
        assert got[m] == pytest.approx((np.sqrt((expected**2).sum()), np.sqrt((after**2).sum())), rel=1e-12)
    head = new[f"{HEAD}/w"].astype(np.float64)
    assert got[HEAD] == pytest.approx((np.linalg.norm(head - old[f"{HEAD}/w"]), np.linalg.norm(head)), rel=1e-12)
    assert {m: change for m, (change, _) in module_changes(old, old, MODULES, 2.0, base_deltas).items()} == dict.fromkeys([*MODULES, HEAD], 0.0)


def test_refuses_what_it_cannot_do() -> None:
    old, new = state(0, True), state(1, True)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        server_step(old, new, 1.5, MODULES, 1.0, base_deltas=True)
    with pytest.raises(ValueError, match="keys differ"):
        server_step(old, {k: v for k, v in new.items() if k != f"{HEAD}/w"}, 0.5, MODULES, 1.0, base_deltas=True)
    bad = dict(new, **{f"{HEAD}/w": np.zeros((3, D_OUT), np.float32)})
    with pytest.raises(ValueError, match=r"head/w has shape \(3, 5\)"):
        server_step(old, bad, 0.5, MODULES, 1.0, base_deltas=True)
    no_delta = state(1, False)
    with pytest.raises(ValueError, match="base_delta is missing"):
        server_step(state(0, False), no_delta, 0.5, MODULES, 1.0, base_deltas=True)


@pytest.mark.parametrize("name", ["fedavg", "flora"])
def test_a_real_round_with_half_the_server_rate_lands_half_way(fast_config: Config, name: str) -> None:
    """Two servers from one start, one round each with the same clients: server_lr 0.5 lands half way to
    server_lr 1 (every tensor for fedavg; every module's effective weight and the head for flora, which
    merges into the base and restarts its factors)."""
    config = fast_config.model_copy(update={"strategy": name, "federation": fast_config.federation.model_copy(update={"budgets": None})})
    federation = build_federation(config, progress=False)
    context, strategy = federation.server.context, STRATEGIES[name]
    initial = {k: v.copy() for k, v in federation.server.global_tensors.items()}
    ends = {}
    for lr in (1.0, 0.5):
        start = {k: v.copy() for k, v in initial.items()}
        server = Server(strategy(context), federation.infos, start, config.train, config.seed, None, server_lr=lr)
        assert server.run_round(1, federation.transport()).skipped is None
        ends[lr] = server.global_tensors
    head_keys = context.head_keys
    assert head_keys
    for key in head_keys if strategy.capabilities.base_deltas else initial:
        np.testing.assert_allclose(ends[0.5][key], 0.5 * (initial[key].astype(np.float64) + ends[1.0][key]), rtol=1e-5, atol=1e-6)
    if strategy.capabilities.base_deltas:
        for m in context.modules:
            np.testing.assert_allclose(effective(ends[0.5], m, context.scaling),
                                       0.5 * (effective(initial, m, context.scaling) + effective(ends[1.0], m, context.scaling)), atol=1e-5)
    assert not np.allclose(ends[0.5][head_keys[0]], ends[1.0][head_keys[0]])  # the round moved the model
    with pytest.raises(ValueError, match=r"server_lr must be in \(0, 1\]"):
        Server(strategy(context), federation.infos, initial, config.train, config.seed, None, server_lr=0.0)
