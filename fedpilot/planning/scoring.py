"""Information-gain score (IG-score) of LoRA modules: how much training a module is worth now.

For client k and module m, with weight lambda in [0, 1]:

    IG_k(m) = lambda * F_k(m) / sum_m' F_k(m')  +  (1 - lambda) * G(m) / sum_m' G(m')

Local term: F_k(m) is the empirical Fisher information of the module's LoRA parameters on the
client's data, the squared gradient averaged over the module's parameters and a few batches
(per parameter, so modules of different sizes compare). A client scores only the modules it can
afford to backpropagate into; the others get the mean of its scored modules.

Global term: G(m) is an exponential moving average, over rounds, of the module's relative
aggregated update ||theta_m(t) - theta_m(t-1)|| / (||theta_m(t-1)|| + eps): how much the
federation is still changing that module. Before any update it is uniform.

Both terms are shares that sum to one, so IG_k sums to one over the modules.

Scope (fedpilot's ``local_scope``): with ``federation`` (fedpilot's default) the local term every
client is planned with is the federation's, the mean over the K clients the server holds scores of
(:func:`federation_local`),

    IG(m) = lambda * (1/K) sum_k F_k(m) / sum_m' F_k(m')  +  (1 - lambda) * G(m) / sum_m' G(m'),

so clients of one budget train the same set in a round; with ``client``, IG_k above, each client
its own (under strong label skew its own Fisher terms made the federation's sets differ from client
to client and round to round, and accuracy lower: docs/protocol.md).

Variants (fedpilot's ``local_term`` and ``global_term`` options):

- local term per module (``local_term: per-module``): F_k(m) times the module's parameter count
  |m|, the first-order loss decrease of a gradient step on the whole module, so a module with four
  times the parameters of another (``ffn_out`` against ``query``) is worth four times as much at
  equal per-parameter Fisher. Unscored modules get the mean per-parameter term, times their size.
- global term by coverage deficit (``global_term: coverage``): G(m) is the exponential moving
  average of 1 - c_m(t), where c_m(t) is the share of the round's training samples whose clients
  trained m: the modules the federation leaves under-trained are worth more to whoever can afford
  them. Uniform until the first round is aggregated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedpilot.core.tensors import TensorDict, squared_norm

EPS = 1e-12


def shares(values: Mapping[str, float]) -> dict[str, float]:
    """Values divided by their sum (uniform when they sum to zero)."""
    total = sum(values.values())
    if total <= 0:
        return {k: 1.0 / len(values) for k in values}
    return {k: v / total for k, v in values.items()}


def fill_missing(local: Mapping[str, float], modules: Sequence[str]) -> dict[str, float]:
    """Local terms for every module: unscored modules get the mean of the scored ones (or 1)."""
    mean = sum(local.values()) / len(local) if local else 1.0
    return {m: local.get(m, mean) for m in modules}


def local_shares(local: Mapping[str, float], modules: Sequence[str], sizes: Mapping[str, int] | None = None) -> dict[str, float]:
    """A client's local term as shares: its Fisher terms with unscored modules filled (:func:`fill_missing`),
    times ``sizes`` when given (per module), divided by their sum."""
    filled = fill_missing(local, modules)
    if sizes is not None:
        filled = {m: v * sizes[m] for m, v in filled.items()}
    return shares(filled)


def federation_local(
    local_by_client: Iterable[Mapping[str, float]], modules: Sequence[str], sizes: Mapping[str, int] | None = None
) -> dict[str, float]:
    """The federation's local term: the mean over clients of each client's local shares (unscored
    modules filled with the client's mean first, times ``sizes`` when given); uniform with no scores."""
    per_client = [local_shares(local, modules, sizes) for local in local_by_client]
    if not per_client:
        return {m: 1.0 / len(modules) for m in modules}
    return {m: sum(s[m] for s in per_client) / len(per_client) for m in modules}


def ig_scores(
    local: Mapping[str, float],
    global_change: Mapping[str, float],
    modules: Sequence[str],
    weight: float,
    sizes: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """IG_k(m) for every module, from a client's local Fisher terms (per parameter) and the server's
    global terms; with ``sizes`` (parameters per module) the local terms count per module."""
    local_share = local_shares(local, modules, sizes)
    global_share = shares({m: global_change.get(m, 0.0) for m in modules})
    return {m: weight * local_share[m] + (1 - weight) * global_share[m] for m in modules}


class ModuleAverage:
    """A per-module exponential moving average G(m) (decay ``decay``), the global term's shared state."""

    def __init__(self, modules: Sequence[str], decay: float) -> None:
        self.modules = list(modules)
        self.decay = decay
        self.change: dict[str, float] = {}

    def smooth(self, values: Mapping[str, float]) -> None:
        """Fold this round's value of every module into its average (the first value starts it)."""
        for m in self.modules:
            previous = self.change.get(m)
            self.change[m] = values[m] if previous is None else self.decay * previous + (1 - self.decay) * values[m]

    def state_dict(self) -> dict[str, Any]:
        return {"change": dict(self.change)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.change = {str(k): float(v) for k, v in state["change"].items()}


class GlobalCoverage(ModuleAverage):
    """The server's running measure G(m) of how much of the federation's training leaves module m out."""

    def observe_round(self, before: TensorDict, after: TensorDict, coverage: Mapping[str, float]) -> None:
        """Fold in the round's coverage (the weights themselves are not needed)."""
        self.observe_coverage(coverage)

    def observe_coverage(self, coverage: Mapping[str, float]) -> None:
        """``coverage[m]``: the share of the round's training samples whose clients trained m (missing: 0)."""
        self.smooth({m: 1.0 - float(coverage.get(m, 0.0)) for m in self.modules})


class GlobalChange(ModuleAverage):
    """The server's running measure G(m) of how much each module's global weights still move."""

    def __init__(self, module_keys: Mapping[str, Sequence[str]], modules: Sequence[str], decay: float) -> None:
        super().__init__(modules, decay)
        self.module_keys = module_keys

    def observe_round(self, before: TensorDict, after: TensorDict, coverage: Mapping[str, float]) -> None:
        """Fold in the round's relative change of every module (its coverage is not needed)."""
        self.observe(before, after)

    def observe(self, before: TensorDict, after: TensorDict) -> None:
        relative = {}
        for m in self.modules:
            keys = self.module_keys[m]
            delta = np.sqrt(squared_norm(*(after[k] - before[k] for k in keys)))
            norm = np.sqrt(squared_norm(*(before[k] for k in keys)))
            relative[m] = float(delta / (norm + EPS))
        self.smooth(relative)


def rank_share(rank: int, full_rank: int) -> float:
    """The share of a module's value that training it at ``rank`` earns, out of ``full_rank``:
    ``H(rank) / H(full_rank)``, H the harmonic number (``H(0) = 0``, so rank 0 earns nothing and the
    full rank all of it).

    Why: the update a module would make at full rank has singular values that decay fast (LoRA's low
    intrinsic rank); taking them to decay like 1/i, a rank-r adapter captures the leading r of them,
    a share sum_{i <= r} 1/i / sum_{i <= R} 1/i of their sum (the nuclear norm). The share is concave
    and saturating (each added rank is worth less than the one before: H(1)/H(8) = 0.37,
    H(4)/H(8) = 0.76), with no free parameter, and exactly 1 at the full rank, so a module offered
    at the full rank alone is worth its score, as the module-set allocator values it.
    """
    if not 0 <= rank <= full_rank or full_rank < 1:
        raise ValueError(f"rank {rank} must lie in 0..{full_rank} (the full rank, >= 1)")
    if rank == full_rank:
        return 1.0
    return _harmonic(rank) / _harmonic(full_rank)


def _harmonic(n: int) -> float:
    return math.fsum(1.0 / i for i in range(1, n + 1))


def rank_values(scores: Mapping[str, float], rank_options: Sequence[int], full_rank: int) -> dict[str, dict[int, float]]:
    """v(m, r) = score(m) * :func:`rank_share` (r, ``full_rank``) for every non-zero r of ``rank_options``."""
    shares = {r: rank_share(r, full_rank) for r in rank_options if r > 0}
    return {m: {r: s * share for r, share in shares.items()} for m, s in scores.items()}
