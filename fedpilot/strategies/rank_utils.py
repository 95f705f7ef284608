"""Pure numpy helpers for strategies whose clients train LoRA at ranks below the global one.

Conventions (as everywhere in fedpilot): ``lora_A`` has shape (r, d_in), ``lora_B`` (d_out, r), the
module's update is ``scaling * B @ A`` with the scaling fixed at alpha / (global rank), so

- truncating to rank r keeps the first r rank components (A's first rows, B's first columns);
- zero-padding a rank-r pair back to the global rank leaves ``B @ A`` unchanged;
- the best rank-r factorisation of a matrix W (Eckart-Young, Frobenius norm) is split evenly:
  ``W = U S V^T`` (singular values descending), ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``.

Nothing here broadcasts or drops silently: a rank above what a tensor holds, or a pad that would
change any axis but the rank axis, is a ValueError naming the key. The budget helpers price a rank
exactly as the server's report does: ``cost(all modules, {m: r})``, ranks given only below the
global one (the cost model's base rank).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedpilot.core.errors import FedpilotError
from fedpilot.core.keys import LORA_A, LORA_B, module_of, rank_axis, tensor_key
from fedpilot.core.sizes import mib
from fedpilot.core.tensors import TensorDict
from fedpilot.planning.costmodel import CostModel
from fedpilot.strategies.base import ClientInfo, ClientUpdate, FederationContext

# -- shapes ---------------------------------------------------------------------------------------


def truncate(key: str, value: np.ndarray, rank: int) -> np.ndarray:
    """The first ``rank`` rank components of a LoRA tensor (a contiguous copy)."""
    axis = rank_axis(key)
    if axis is None:
        raise ValueError(f"{key}: not a LoRA tensor, it has no rank to truncate")
    if not 1 <= rank <= value.shape[axis]:
        raise ValueError(f"{key}: cannot truncate rank {value.shape[axis]} to {rank}")
    return np.ascontiguousarray(value[:rank] if axis == 0 else value[:, :rank])


def truncate_adapter(tensors: Mapping[str, np.ndarray], ranks: Mapping[str, int]) -> TensorDict:
    """Every tensor of ``tensors``; those of the modules in ``ranks`` cut to that rank (the others as they are)."""
    return {k: truncate(k, v, ranks[module_of(k)]) if module_of(k) in ranks and rank_axis(k) is not None else v for k, v in tensors.items()}


def zero_pad(key: str, value: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A LoRA tensor padded with zero rank components up to ``shape`` (the global one); only the rank axis may grow."""
    axis, shape = rank_axis(key), tuple(shape)
    if value.shape == shape:
        return value
    ok = axis is not None and len(shape) == value.ndim and all(
        (n <= s if i == axis else n == s) for i, (n, s) in enumerate(zip(value.shape, shape))
    )
    if not ok:
        raise ValueError(f"{key}: cannot zero-pad shape {value.shape} to {shape} (only the rank axis may grow)")
    padded = np.zeros(shape, dtype=value.dtype)
    padded[tuple(slice(0, n) for n in value.shape)] = value
    return padded


def head_only(update: ClientUpdate) -> ClientUpdate:
    """The update with its LoRA tensors left out (what FedAvg's per-key mean may take as it is)."""
    kept = {k: v for k, v in update.tensors.items() if rank_axis(k) is None}
    return ClientUpdate(update.cid, update.num_samples, kept, update.metrics)


def lora_pair(update: ClientUpdate, module: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(B, A)`` of ``module`` in the update, None if it sent neither; a ValueError if it sent one only."""
    a, b = update.tensors.get(tensor_key(module, LORA_A)), update.tensors.get(tensor_key(module, LORA_B))
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError(f"{module}: client {update.cid} sent only one of lora_A / lora_B")
    if a.shape[0] != b.shape[1]:
        raise ValueError(f"{module}: client {update.cid} sent lora_A of rank {a.shape[0]} and lora_B of rank {b.shape[1]}")
    return b, a


# -- products and factorisations ------------------------------------------------------------------


def product(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``B @ A`` in float64."""
    return b.astype(np.float64) @ a.astype(np.float64)


def average_products(pairs: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float]) -> np.ndarray:
    """``sum_k w_k B_k A_k / sum_k w_k`` in float64; the pairs may have different ranks."""
    total = float(sum(weights))
    if not pairs or total <= 0:
        raise ValueError("average_products needs at least one pair and weights with a positive sum")
    out = np.zeros((pairs[0][0].shape[0], pairs[0][1].shape[1]), dtype=np.float64)
    for (b, a), w in zip(pairs, weights):
        out += (w / total) * product(b, a)
    return out


def svd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The thin SVD ``U, S, V^T`` of a matrix, in float64, singular values descending."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)


def factors_from_svd(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, A) = (U_r sqrt(S_r), sqrt(S_r) V_r^T)`` in float64."""
    if not 1 <= rank <= s.shape[0]:
        raise ValueError(f"cannot factorise at rank {rank}: the matrix has {s.shape[0]} singular values")
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def best_rank_factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The best rank-``rank`` factorisation ``(B, A)`` of ``matrix`` (truncated SVD, split evenly), float64."""
    return factors_from_svd(*svd(matrix), rank)


# -- ranks under a budget -------------------------------------------------------------------------


def uniform_ranks(modules: Sequence[str], rank: int, global_rank: int) -> dict[str, int]:
    """``{m: rank}`` for every module, or ``{}`` at the global rank (Assignment.ranks lists only differences)."""
    return {} if rank == global_rank else {m: rank for m in modules}


def can_price(cost_model: CostModel, modules: Sequence[str], rank: int, global_rank: int) -> bool:
    """Whether the cost model prices ``modules`` at ``rank`` (one without per-rank terms prices only the global rank)."""
    return rank == global_rank or (cost_model.rank is not None and all(m in cost_model.rank_bytes for m in modules))


def largest_fitting_rank(cost_model: CostModel, modules: Sequence[str], global_rank: int, room: int | None) -> int | None:
    """The largest r <= ``global_rank`` with ``cost(modules, {m: r}) <= room`` (None: no rank fits; no room limit: the global rank)."""
    if room is None:
        return global_rank
    for rank in range(global_rank, 0, -1):
        if can_price(cost_model, modules, rank, global_rank) and cost_model.cost(modules, uniform_ranks(modules, rank, global_rank)) <= room:
            return rank
    return None


def budget_rank(context: FederationContext, client: ClientInfo) -> int | None:
    """The largest rank at which the client trains every module within its usable budget (None: it sits out)."""
    room = None if client.budget_bytes is None else context.usable(client.budget_bytes)
    return largest_fitting_rank(context.cost_model_for(client), list(context.modules), context.rank, room)


def able_clients(context: FederationContext, clients: Sequence[ClientInfo]) -> list[ClientInfo]:
    """The clients that can train every module at some rank >= 1."""
    return [c for c in clients if budget_rank(context, c) is not None]


def check_able(context: FederationContext, clients: Sequence[ClientInfo], name: str) -> None:
    """``check_budgets`` of strategy ``name``, which trains every module at a client's own rank: refuses a
    federation in which no client can (:func:`nobody_fits`)."""
    if not able_clients(context, clients):
        raise nobody_fits(context, name)


def nobody_fits(context: FederationContext, name: str) -> FedpilotError:
    """The one-line error for a federation in which no client can train every module at any rank."""
    modules = list(context.modules)
    lowest = 1 if can_price(context.cost_model, modules, 1, context.rank) else context.rank
    need = context.cost_model.cost(modules, uniform_ranks(modules, lowest, context.rank))
    return FedpilotError(
        f"federation.budgets: {name} trains every LoRA module at a client's own rank, and no client's budget fits that "
        f"even at rank {lowest} ({mib(need):.1f} MiB plus the {context.memory_margin:.0%} margin); "
        f"raise a budget or choose another strategy"
    )

