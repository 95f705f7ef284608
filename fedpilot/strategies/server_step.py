"""The server's step from the global state towards a round's aggregate (``federation.server_lr``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedpilot.core.keys import HEAD, LORA_A, LORA_B, module_of, tensor_key
from fedpilot.core.tensors import TensorDict
from fedpilot.strategies.aggregation_utils import merge_keys


def server_step(
    old: TensorDict, new: TensorDict, lr: float, modules: Sequence[str], scaling: float, base_deltas: bool
) -> TensorDict:
    """The global state after a server step of size ``lr`` (0 < lr <= 1) from ``old`` towards the aggregate ``new``.

    Every tensor moves linearly, ``x <- x_old + lr (x_new - x_old)`` (the server learning rate of
    FedOpt, Reddi et al. 2021, without an adaptive optimiser; lr = 1 takes the aggregate as it is).
    For LoRA factors this interpolates A and B, not their product, as averaging them does. Where the
    state merges into frozen weights (``base_deltas``: a module's weight is ``D + s B A``), the merge
    is corrected so the module's effective weight moves exactly by ``lr`` of the aggregate's step:

        D <- W_old + lr (W_new - W_old) - s B' A',   W = D + s B A,   B', A' the interpolated factors

    (strategies that re-initialise A and B after merging, like FLoRA, stay exact this way). Computed
    in float64, returned in each tensor's dtype; keys and shapes must match (no broadcasting).
    """
    if not 0 < lr <= 1:
        raise ValueError(f"server learning rate must be in (0, 1], got {lr}")
    if set(old) != set(new):
        raise ValueError(f"server step: the aggregate's keys differ from the global state's ({sorted(set(old) ^ set(new))[:3]})")
    if lr == 1:
        return dict(new)
    result: TensorDict = {}
    for key, current in old.items():
        if new[key].shape != current.shape:
            raise ValueError(f"server step: the aggregate's {key} has shape {new[key].shape}, the global state's {current.shape}")
        moved = current.astype(np.float64) + lr * (new[key].astype(np.float64) - current.astype(np.float64))
        result[key] = moved.astype(current.dtype)
    if base_deltas:
        for module in modules:
            a_key, b_key, d_key = merge_keys(module)
            if d_key not in old:
                raise ValueError(f"server step: {d_key} is missing from a state that merges into the base")
            before, after = (_effective_weight(state, a_key, b_key, d_key, scaling) for state in (old, new))
            product = scaling * (result[b_key].astype(np.float64) @ result[a_key].astype(np.float64))
            result[d_key] = (before + lr * (after - before) - product).astype(old[d_key].dtype)
    return result


def _effective_weight(state: TensorDict, a_key: str, b_key: str, d_key: str, scaling: float) -> np.ndarray:
    """``D + s B A`` in float64: the change a merging strategy's state makes to a module's frozen weight."""
    return state[d_key].astype(np.float64) + scaling * (state[b_key].astype(np.float64) @ state[a_key].astype(np.float64))


def module_changes(old: TensorDict, new: TensorDict, modules: Sequence[str], scaling: float, base_deltas: bool) -> dict[str, tuple[float, float]]:
    """How far a round moved each module's effective weight, and where it left it: ``(||W_new - W_old||_F,
    ||W_new||_F)`` with ``W = s B A`` (plus the merged ``D`` where the state has one: the module's whole change
    of its frozen weight), and the head's tensors as ``"head"`` (their joint Frobenius norms). A module whose
    factors did not move has a change of 0. Both states must hold the same keys."""
    changes: dict[str, tuple[float, float]] = {}
    for module in modules:
        a_key, b_key = tensor_key(module, LORA_A), tensor_key(module, LORA_B)
        if a_key not in old or b_key not in old:
            continue
        if base_deltas:
            d_key = merge_keys(module)[2]
            before, after = (_effective_weight(state, a_key, b_key, d_key, scaling) for state in (old, new))
        else:
            before, after = (scaling * (state[b_key].astype(np.float64) @ state[a_key].astype(np.float64)) for state in (old, new))
        changes[module] = (float(np.linalg.norm(after - before)), float(np.linalg.norm(after)))
    head = [k for k in old if module_of(k) == HEAD]
    if head:
        moved = sum(np.sum((new[k].astype(np.float64) - old[k].astype(np.float64)) ** 2) for k in head)
        changes[HEAD] = (float(np.sqrt(moved)), float(np.sqrt(sum(np.sum(new[k].astype(np.float64) ** 2) for k in head))))
    return changes
