"""Spatial-temporal aggregation (stagg) of LoRA modules that different clients trained: the coverage-
and staleness-weighted update history (:class:`TemporalCompensation`, stagg ``momentum``) and every
client's latest update standing in for it (:class:`UpdateMemory`, stagg ``memory``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedpilot.core.tensors import TensorDict, squared_norm
from fedpilot.strategies.aggregation_utils import check_same_shape, component_mean_delta, sample_weighted_average, weighted_mean
from fedpilot.strategies.base import ClientUpdate
from fedpilot.strategies.rank_utils import head_only


def compensation_weight(eta: float, coverage: float, staleness: int, tau: int) -> float:
    """stagg's weight of a module's update history: w = eta (1 - c) min(1, (s + 1) / tau) (:class:`TemporalCompensation`)."""
    return eta * (1 - coverage) * min(1.0, (staleness + 1) / tau)


class TemporalCompensation:
    """Spatial-temporal aggregation (stagg) of LoRA modules trained by different clients.

    Per tensor key x of module m, in a round with participating clients P and the subset K_x that
    sent x:

        spatial    D_x = sum_{k in K_x} n_k (theta_k,x - theta_x) / sum_{k in K_x} n_k      (0 if K_x is empty)
        coverage   c_x = sum_{k in K_x} n_k / sum_{k in P} n_k
        staleness  s_m = 0 if any client trained a tensor of m, else s_m + 1
        history    h_x = beta * h_x + (1 - beta) * D_x   if K_x is non-empty, else beta * h_x
        weight     w_x = eta * (1 - c_x) * min(1, (s_m + 1) / tau)
        update     theta_x <- theta_x + lambda_m * g_x * D_x + w_x * h_x

    g_x is 1 (``spatial: trainers``: a module moves by the mean update of the clients that trained it) or
    c_x (``spatial: coverage``, fedpilot's default: the mean over every client of the round, a client that left x
    out counting as a zero update, so a module one client of nine trained moves by that client's share of
    the round's rows, not by its whole update; docs/protocol.md, the rt-few-rich diagnosis). The history
    keeps the unscaled D_x. lambda_m is 1 unless a DWA temperature T is given. Dynamic weight adjustment (DWA, the rule of
    Liu et al., CVPR 2019, "End-to-End Multi-Task Learning with Attention", with modules as tasks and
    the norm of a module's spatial update in place of a task's loss): with u_m(t) = ||D_m(t)|| over the
    keys of m in the t-th round that trained m (the rounds m sat out do not count),

        ratio      r_m = u_m(t-1) / u_m(t-2)           (for the modules R with two such rounds behind them)
        DWA        lambda_m = |R| exp(r_m / T) / sum_{i in R} exp(r_i / T),   lambda_m = 1 outside R

    so the lambdas of R average to 1: a module whose updates shrink more slowly than the others' (an
    under-updated module, still far from where its data pull it) takes a larger step, one that has
    settled a smaller one. T -> infinity is plain stagg; r_m is read before this round's update.

    Where clients trained a module at lower ranks (fedpilot-rank), each rank component of A and B is
    a tensor of its own here: D_x, c_x and w_x are per component, over the clients that trained it
    (:func:`~fedpilot.strategies.aggregation_utils.component_mean_delta`); s_m stays per module.

    A module every client trained moves exactly as in FedAvg (c = 1). One that few or no clients
    trained keeps moving along its update history, more as it grows stale, less as coverage grows;
    the history decays while it is untouched, so the drift stays bounded. A tensor never trained
    has no history and never moves. The head, which every client trains, is the plain
    sample-weighted mean.
    """

    def __init__(self, module_keys: Mapping[str, Sequence[str]], modules: Sequence[str], eta: float, beta: float, tau: int,
                 temperature: float | None = None, spatial: str = "trainers") -> None:
        if spatial not in ("trainers", "coverage"):
            raise ValueError(f"spatial must be trainers or coverage, got {spatial!r}")
        self.module_keys = module_keys
        self.scale_by_coverage = spatial == "coverage"
        self.modules = list(modules)
        self.eta, self.beta, self.tau = eta, beta, tau
        self.temperature = temperature
        self.history: TensorDict = {}
        self.staleness: dict[str, int] = {m: 0 for m in self.modules}
        self.update_norms: dict[str, list[float]] = {}  # the last two ||D_m|| of the rounds that trained m

    def dwa_weights(self) -> dict[str, float]:
        """lambda_m of the next round (1 for every module without DWA or without two trained rounds)."""
        weights = {m: 1.0 for m in self.modules}
        if self.temperature is None:
            return weights
        ratios = {m: (n[1] / n[0] if n[0] > 0 else 1.0) for m, n in self.update_norms.items() if len(n) == 2}
        if ratios:
            top = max(ratios.values()) / self.temperature  # subtracted for a stable softmax
            exps = {m: float(np.exp(r / self.temperature - top)) for m, r in ratios.items()}
            total = sum(exps.values())
            weights.update({m: len(exps) * e / total for m, e in exps.items()})
        return weights

    def aggregate(self, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        # head, and any key outside a module (the modules' keys are replaced below)
        result = sample_weighted_average(global_tensors, [head_only(u) for u in updates])
        participants = sum(u.num_samples for u in updates)
        lambdas = self.dwa_weights()
        for m in self.modules:
            keys = self.module_keys[m]
            touched = any(key in u.tensors for u in updates for key in keys)
            self.staleness[m] = 0 if touched else self.staleness[m] + 1
            module_squares = 0.0
            for key in keys:
                current = global_tensors[key]
                trained = [u for u in updates if key in u.tensors]
                # per rank component where clients trained lower ranks (component_mean_delta); else one number
                mean_delta, samples = component_mean_delta(key, current, trained) if trained else (None, 0.0)
                coverage = samples / participants if participants else 0.0
                weight = compensation_weight(self.eta, coverage, self.staleness[m], self.tau)
                history = self.history.get(key, np.zeros_like(current))
                if trained:
                    history = self.beta * history + (1 - self.beta) * mean_delta
                    if self.temperature is not None:  # DWA's norms: no work on this path without it
                        module_squares += squared_norm(mean_delta)
                else:
                    mean_delta = np.zeros_like(current)
                    history = self.beta * history
                self.history[key] = history
                compensated = weight * history if np.isscalar(weight) else (weight * history).astype(current.dtype)
                step = lambdas[m] * coverage * mean_delta if self.scale_by_coverage else lambdas[m] * mean_delta
                result[key] = current + step.astype(current.dtype) + compensated
            if touched and self.temperature is not None:
                self.update_norms[m] = [*self.update_norms.get(m, []), float(np.sqrt(module_squares))][-2:]
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: v.copy() for k, v in self.history.items()}, "staleness": dict(self.staleness),
                "update_norms": {m: list(n) for m, n in self.update_norms.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {str(k): np.asarray(v).copy() for k, v in state["history"].items()}
        self.staleness = {str(k): int(v) for k, v in state["staleness"].items()}
        # absent in checkpoints made before DWA: no norms yet, lambda = 1 until two trained rounds are seen
        self.update_norms = {str(m): [float(x) for x in n] for m, n in state.get("update_norms", {}).items()}


class UpdateMemory:
    """Spatial-temporal aggregation by update memory (stagg ``memory``): every client's latest update
    of every tensor stands in for it in the rounds it sits out (variance reduction in the manner of
    MIFA, Gu et al. 2021, and FedVARP, Jhunjhunwala et al. 2022, per tensor).

    Per tensor key x, with S_x the clients of this round that sent x (update Delta_i,x = theta_i,x -
    theta_x, n_i samples) and Y_x the clients whose latest update of x the server remembers (y_j,x
    with n_j samples):

        memory     ybar_x  = sum_{j in Y_x} n_j y_j,x / sum_{j in Y_x} n_j            (0 if Y_x is empty)
        baseline   b_i,x   = y_i,x if i in Y_x, else ybar_x
        update     theta_x <- theta_x + ybar_x + sum_{i in S_x} n_i (Delta_i,x - b_i,x) / sum_{i in S_x} n_i
        remember   y_i,x   <- Delta_i,x and n_i for every i in S_x

    A tensor's step is the sample-weighted mean of the latest updates of every client that ever
    trained it, each replaced by a fresh one when its client trains again. The round's few clients
    then cannot pull a module (or the head) towards their own classes alone: under label skew and
    partial participation the clients that sit out keep their say. With an empty memory the step is
    FedAvg over the clients that sent x; with every client taking part every round it is FedAvg.
    A tensor no client sent this round stays put: re-applying old updates round after round with
    nothing new to correct them would drift without bound. Every tensor, the head included, is
    aggregated so.
    ``horizon`` (rounds, None: forever) forgets an update that many rounds after it was made.
    """

    def __init__(self, horizon: int | None = None) -> None:
        self.horizon = horizon
        self.memory: dict[int, TensorDict] = {}  # cid -> key -> its latest update of that key
        self.samples: dict[int, int] = {}
        self.made: dict[int, dict[str, int]] = {}  # cid -> key -> the round its update was made
        self.round = 0

    def aggregate(self, global_tensors: TensorDict, updates: Sequence[ClientUpdate]) -> TensorDict:
        self.round += 1
        self.forget()
        result: TensorDict = {}
        for key, current in global_tensors.items():
            senders = [u for u in updates if key in u.tensors]
            if not senders:
                result[key] = current.copy()
                continue
            for u in senders:
                check_same_shape(key, current, u.tensors[key], u.cid)
            remembered = [cid for cid in sorted(self.memory) if key in self.memory[cid]]
            if remembered:
                mean = weighted_mean([self.memory[c][key] for c in remembered], [self.samples[c] for c in remembered], key)
            else:
                mean = np.zeros_like(current)
            corrections = [u.tensors[key] - current - self.memory.get(u.cid, {}).get(key, mean) for u in senders]
            step = mean.astype(np.float64) + weighted_mean(corrections, [u.num_samples for u in senders], key).astype(np.float64)
            result[key] = (current.astype(np.float64) + step).astype(current.dtype)
        for u in updates:
            slot, made = self.memory.setdefault(u.cid, {}), self.made.setdefault(u.cid, {})
            for key, sent in u.tensors.items():
                if key in global_tensors:
                    slot[key] = sent - global_tensors[key]
                    made[key] = self.round
            self.samples[u.cid] = u.num_samples
        return result

    def forget(self) -> None:
        """Drop the updates made ``horizon`` or more rounds before this one."""
        if self.horizon is None:
            return
        for cid in list(self.memory):
            for key in [k for k, made in self.made[cid].items() if self.round - made >= self.horizon]:
                del self.memory[cid][key], self.made[cid][key]
            if not self.memory[cid]:
                del self.memory[cid], self.made[cid], self.samples[cid]

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "memory": {str(cid): {k: v.copy() for k, v in slot.items()} for cid, slot in self.memory.items()},
            "samples": {str(cid): n for cid, n in self.samples.items()},
            "made": {str(cid): dict(made) for cid, made in self.made.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.round = int(state["round"])
        self.memory = {int(cid): {str(k): np.asarray(v).copy() for k, v in slot.items()} for cid, slot in state["memory"].items()}
        self.samples = {int(cid): int(n) for cid, n in state["samples"].items()}
        self.made = {int(cid): {str(k): int(r) for k, r in made.items()} for cid, made in state["made"].items()}
