"""Fed-HeLLo's Fisher-guided allocation, FIM-HLA (Zhang, Liu, Xu, Hu, "Fed-HeLLo: Efficient Federated
Foundation Model Fine-Tuning with Heterogeneous LoRA Allocation", IEEE TNNLS 2025, arXiv 2506.12213).

Defining rule: layer importance comes from the diagonal empirical Fisher information of each layer's
LoRA parameters on a small proxy set the SERVER holds (about 0.2 % of each class, removed from the
clients' data: ``data.proxy_fraction``, default :attr:`Capabilities.proxy_default_fraction`):

    F_t = (1/N) sum_i (d loss_i / d theta_t)^2,   score(layer) = sum over the layer's LoRA tensors t of ||F_t||_F

(:class:`fedpilot.runtime.proxy.ProxyScorer`). The layer scores are clustered by k-means (k = 3, solved
exactly in one dimension, :func:`kmeans_1d`); the clusters, from the lowest centre up, get sampling
weights 1/27, 2/27, 1/9 (Fed-HeLLo's values; :func:`cluster_probabilities`), normalised over layers.
Every round each client draws layers without replacement by these probabilities, each kept while the
union still fits its usable budget under the position-aware cost model (as RGD-HLA,
:class:`~fedpilot.strategies.layer_pattern.LayerPattern`). For the first ``warmup_rounds`` rounds the
probabilities are the bottleneck prior; the Fisher scores are recomputed every ``refresh_rounds``
rounds after that, on the global adapter of the time. Aggregation: FedAvg per tensor over the clients
that trained it.

Where the release differs or is silent: its cluster-to-probability map is not ordered by score (a bug);
here the highest-scoring cluster gets the highest probability. Its schedule is 50 warm-up rounds and a
refresh every 50 of 500; here both default to small numbers for short runs (options). The Fisher is the
per-sample gradient of the family's loss (the log-likelihood of the true label), not of the raw logit.

Deterministic variant (``deterministic: true``): no sampling; each client gets the exact knapsack
(:func:`fedpilot.planning.allocation.solve`) with each module valued by its Fisher score alone (during
the warm-up: the fixed bottleneck order, GD-HLA).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from fedpilot.core.keys import module_layer
from fedpilot.core.settings import StrictModel
from fedpilot.planning.allocation import Problem, solve
from fedpilot.planning.costmodel import nothing_fits
from fedpilot.planning.layers import pattern_probabilities, priority_order, weighted_order
from fedpilot.strategies import STRATEGIES
from fedpilot.strategies.base import Capabilities, ClientInfo, FederationContext
from fedpilot.strategies.layer_pattern import LayerPattern
from fedpilot.strategies.layer_utils import client_rng

#: Fed-HeLLo's sampling weights of the Fisher clusters, from the least to the most important
CLUSTER_WEIGHTS: tuple[float, ...] = (1 / 27, 2 / 27, 1 / 9)


class FisherOptions(StrictModel):
    warmup_rounds: int = Field(1, ge=0, description="rounds on the bottleneck prior before the first Fisher scores")
    refresh_rounds: int = Field(2, ge=1, description="the server recomputes the Fisher scores every this many rounds")
    clusters: int = Field(3, ge=1, le=len(CLUSTER_WEIGHTS), description="k of the k-means over layer scores")
    deterministic: bool = Field(False, description="the exact knapsack with Fisher values instead of sampling layers")

    # what LayerPattern reads: the warm-up prior
    @property
    def pattern(self) -> str:
        return "bottleneck"

    @property
    def randomized(self) -> bool:
        return not self.deterministic


def kmeans_1d(values: Sequence[float], k: int) -> np.ndarray:
    """Optimal k-means of 1-D ``values`` (least within-cluster sum of squares), by dynamic programming
    over the sorted values (optimal 1-D clusters are contiguous). Returns each value's cluster rank,
    0 = the cluster of the lowest centre. With fewer distinct values than ``k``, one cluster per value."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=int)
    k = max(1, min(k, len(np.unique(x))))
    order = np.argsort(x, kind="stable")
    s = x[order]
    prefix, prefix2 = np.concatenate([[0.0], np.cumsum(s)]), np.concatenate([[0.0], np.cumsum(s * s)])

    def sse(i: int, j: int) -> float:  # sum of squares of s[i:j] around its mean
        total, count = prefix[j] - prefix[i], j - i
        return max(0.0, (prefix2[j] - prefix2[i]) - total * total / count)

    cost = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), dtype=int)
    cost[0, 0] = 0.0
    for c in range(1, k + 1):
        for j in range(c, n + 1):
            for i in range(c - 1, j):
                candidate = cost[c - 1, i] + sse(i, j)
                if candidate < cost[c, j]:
                    cost[c, j], cut[c, j] = candidate, i
    labels_sorted = np.zeros(n, dtype=int)
    j = n
    for c in range(k, 0, -1):
        i = cut[c, j]
        labels_sorted[i:j] = c - 1
        j = i
    labels = np.empty(n, dtype=int)
    labels[order] = labels_sorted
    return labels


def cluster_probabilities(scores: Sequence[float], k: int = 3) -> np.ndarray:
    """Per-layer sampling probabilities: layers clustered by :func:`kmeans_1d`; the c-th cluster from the
    top gets ``CLUSTER_WEIGHTS[-1 - c]``; normalised to sum 1. All-equal scores give equal probabilities."""
    labels = kmeans_1d(scores, k)
    found = int(labels.max()) + 1 if len(labels) else 0
    weights = np.array(CLUSTER_WEIGHTS[len(CLUSTER_WEIGHTS) - found:])[labels]
    return weights / weights.sum()


def layer_scores(module_scores: Mapping[str, float], num_layers: int) -> np.ndarray:
    """Per-layer sums of module scores (layer 0 = the lowest); layers without scores get 0."""
    out = np.zeros(num_layers)
    for module, score in module_scores.items():
        out[module_layer(module)] += score
    return out


@STRATEGIES.register("fisher")
class FisherAllocation(LayerPattern):
    Options = FisherOptions
    capabilities = Capabilities(memory_aware=True, per_client_assignment=True, rank_heterogeneous=False, needs_proxy=True)

    def __init__(self, context: FederationContext, options: StrictModel | None = None) -> None:
        super().__init__(context, options)
        self.prior = pattern_probabilities("bottleneck", context.num_layers)
        self.module_scores: dict[str, float] | None = None
        self.fisher_probabilities: np.ndarray | None = None
        self.last_refresh: int | None = None

    # -- the server's proxy-set scoring ----------------------------------------------------------------
    def configure_proxy(self, server_round: int) -> bool:
        if server_round <= self.options.warmup_rounds:
            return False
        return self.last_refresh is None or server_round - self.last_refresh >= self.options.refresh_rounds

    def aggregate_proxy(self, server_round: int, scores: Mapping[str, float]) -> None:
        missing = set(self.context.modules) - set(scores)
        if missing:
            raise ValueError(f"fisher: the proxy scores lack modules {sorted(missing)[:3]}")
        self.module_scores = {m: float(scores[m]) for m in self.context.modules}
        self.fisher_probabilities = cluster_probabilities(layer_scores(self.module_scores, self.context.num_layers), self.options.clusters)
        self.last_refresh = server_round

    # -- allocation ------------------------------------------------------------------------------------
    @property
    def probabilities_now(self) -> np.ndarray:
        """The layer probabilities clients sample from now (the prior until the first Fisher scores)."""
        return self.prior if self.fisher_probabilities is None else self.fisher_probabilities

    def layer_order(self, server_round: int, client: ClientInfo) -> list[int]:
        if self.options.deterministic:
            return priority_order(self.probabilities_now)
        return weighted_order(self.probabilities_now, client_rng(self.context, server_round, client))

    def allocate(self, server_round: int, client: ClientInfo) -> tuple[str, ...]:
        if not self.options.deterministic or self.module_scores is None or client.budget_bytes is None:
            return super().allocate(server_round, client)
        cost_model = self.cost_model_for(client)
        allocation = solve(Problem(self.context.usable(client.budget_bytes), cost_model, self.module_scores))
        if allocation is None:  # check_budgets rules this out before the first round
            raise nothing_fits(cost_model, client.cid, client.budget_bytes, self.context.memory_margin)
        chosen = set(allocation.modules)
        return tuple(m for m in self.context.modules if m in chosen)

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"module_scores": self.module_scores, "last_refresh": self.last_refresh}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module_scores, self.fisher_probabilities, self.last_refresh = None, None, None
        if state.get("module_scores") is not None:
            self.aggregate_proxy(int(state["last_refresh"]), state["module_scores"])
